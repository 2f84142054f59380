"""The public development key (issue 17, item 5): never a default; without DIGEST_SECRET_KEY the
first run makes a random key and keeps it; no server on a non-loopback address and no worker
sending mail with the public key."""

import os
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from digest.config import (
    DEV_SECRET_KEY,
    Settings,
    get_settings,
    public_key_refusal,
    with_kept_secret_key,
)
from digest.tokens import Purpose, make_token, read_token
from tests.conftest import REDIS_URL, free_port
from tests.test_cli import DIGEST, run

CELERY = str(Path(sys.executable).parent / "celery")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    env.update(extra)
    return env


def test_without_a_key_the_first_run_creates_one_and_every_later_run_keeps_it(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("DIGEST_SECRET_KEY", raising=False)
    monkeypatch.setenv("DIGEST_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        first = get_settings()
    finally:
        get_settings.cache_clear()
    key_file = tmp_path / "data" / "secret_key"
    assert first.secret_key == key_file.read_text().strip() != DEV_SECRET_KEY
    assert len(first.secret_key) >= 32
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # Another process (a fresh Settings) signs with the same key: links keep working.
    again = with_kept_secret_key(Settings())
    assert again.secret_key == first.secret_key
    token = make_token(first.secret_key, Purpose.UNSUBSCRIBE, {"s": 1})
    assert read_token(again.secret_key, Purpose.UNSUBSCRIBE, token) == {"s": 1}
    # A key that is set wins, and no file is read or written for it.
    assert with_kept_secret_key(Settings(secret_key="x" * 32)).secret_key == "x" * 32


def test_a_key_file_that_cannot_be_kept_or_is_unusable_gets_one_clear_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="cannot be kept .* set DIGEST_SECRET_KEY"):
        with_kept_secret_key(Settings(data_dir=blocker / "sub"))
    (tmp_path / "short").mkdir()
    (tmp_path / "short" / "secret_key").write_text("abc\n")
    with pytest.raises(ValueError, match="empty, short or public"):
        with_kept_secret_key(Settings(data_dir=tmp_path / "short"))


@pytest.mark.parametrize(
    ("overrides", "host", "refused"),
    [
        ({}, "0.0.0.0", False),  # a random key: fine anywhere
        ({"secret_key": DEV_SECRET_KEY}, "127.0.0.1", False),
        ({"secret_key": DEV_SECRET_KEY}, "::1", False),
        ({"secret_key": DEV_SECRET_KEY}, "localhost", False),
        ({"secret_key": DEV_SECRET_KEY}, "0.0.0.0", True),
        ({"secret_key": DEV_SECRET_KEY}, "192.0.2.10", True),
        ({"secret_key": DEV_SECRET_KEY}, "digest.example.org", True),
        ({"secret_key": DEV_SECRET_KEY, "env": "test"}, "127.0.0.1", True),
        ({"secret_key": DEV_SECRET_KEY}, None, False),  # a worker writing to the outbox
        ({"secret_key": DEV_SECRET_KEY, "mailer": "smtp"}, None, True),
    ],
)
def test_the_public_key_is_refused_off_loopback_and_for_mail_that_goes_out(
    overrides, host, refused
):
    settings = Settings(**overrides)
    reason = public_key_refusal(settings, host=host)
    assert (reason is not None) == refused
    if reason:
        assert "\n" not in reason and "set DIGEST_SECRET_KEY" in reason


@pytest.mark.integration
def test_digest_serve_refuses_the_public_key_on_a_public_address(tmp_path):
    result = run(
        ["serve", "--host", "0.0.0.0", "--port", str(free_port())],
        cwd=tmp_path,
        env_extra={"DIGEST_SECRET_KEY": DEV_SECRET_KEY},
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "refusing to start with the public development DIGEST_SECRET_KEY" in result.stderr
    assert "listening on 0.0.0.0" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.integration
def test_digest_serve_without_a_key_keeps_a_random_one_and_serves(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [DIGEST, "serve", "--port", str(port)],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as page:
                    assert page.status == 200
                break
            except OSError:
                assert server.poll() is None, server.communicate()
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
    finally:
        server.terminate()
        server.communicate(timeout=30)
    key = (tmp_path / "instance" / "secret_key").read_text().strip()
    assert len(key) >= 32 and key != DEV_SECRET_KEY


@pytest.mark.integration
def test_a_worker_refuses_to_send_mail_with_the_public_key(tmp_path):
    result = subprocess.run(
        [CELERY, "-A", "workers", "worker", "--pool=solo", "-Q", "hostile-key-probe"],
        cwd=tmp_path,
        env=clean_env(
            DIGEST_SECRET_KEY=DEV_SECRET_KEY,
            DIGEST_MAILER="smtp",
            DIGEST_REDIS_URL=REDIS_URL,
            DIGEST_TASK_QUEUE="hostile-key-probe",
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "refusing to start with the public development DIGEST_SECRET_KEY" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.integration
def test_the_cli_keeps_a_key_only_for_commands_that_sign_links(tmp_path):
    run(["papers", "export"], cwd=tmp_path)
    assert not (tmp_path / "instance").exists()
    run(["demo"], cwd=tmp_path)
    key = (tmp_path / "instance" / "secret_key").read_text().strip()
    # The demo's emails carry links signed with the kept key.
    (eml, *_) = sorted((tmp_path / "outbox").glob("*.eml"))
    text = eml.read_text()
    token = text.split("/unsubscribe/", 1)[1].split()[0].rstrip(">,")
    assert "s" in read_token(key, Purpose.UNSUBSCRIBE, token)
