"""compose.yaml and what a deployer runs with it: the file against the Compose specification
(its official JSON schema, and Debian's docker-compose where installed), .env.example and
scripts/init-env, the migrate service's command on PostgreSQL, and the worker, beat and Flower
healthchecks and task events against real processes. No Docker engine runs here, so each
service's command runs as a process on this machine, taken from compose.yaml as it is."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from base64 import b64encode
from collections.abc import Callable, Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
import yaml
from dotenv import dotenv_values
from jsonschema import Draft202012Validator

from digest.config import Settings
from tests.conftest import (
    POSTGRES_ADMIN_URL,
    REQUIRE_SERVICES,
    ROOT,
    free_port,
    make_settings,
    service_missing,
    worker_env,
)

COMPOSE = ROOT / "compose.yaml"
APP_SERVICES = ("migrate", "web", "worker", "beat", "flower")


def with_venv_path(env: dict[str, str]) -> dict[str, str]:
    """`env` with this venv's bin first on PATH, as the image has its own (`digest`, `celery`)."""
    return {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def spec_errors(document: dict[str, Any]) -> list[str]:
    """What the Compose specification's schema (as check-jsonschema ships it) finds wrong."""
    schema_file = files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    validator = Draft202012Validator(json.loads(schema_file.read_text(encoding="utf-8")))
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(document)
    ]


# --- the file against the specification -------------------------------------------------------


def test_compose_yaml_follows_the_compose_specification():
    assert spec_errors(load_compose()) == []


def _unknown_key(doc: dict[str, Any]) -> None:
    doc["services"]["web"]["restart_policy"] = "always"


def _bad_condition(doc: dict[str, Any]) -> None:
    doc["services"]["web"]["depends_on"]["migrate"]["condition"] = "service_completed"


def _interval_as_number(doc: dict[str, Any]) -> None:
    doc["services"]["worker"]["healthcheck"]["interval"] = 60


def _ports_as_string(doc: dict[str, Any]) -> None:
    doc["services"]["mailpit"]["ports"] = "127.0.0.1:8025:8025"


BREAKAGES = [_unknown_key, _bad_condition, _interval_as_number, _ports_as_string]


@pytest.mark.parametrize("break_it", BREAKAGES, ids=lambda f: f.__name__.strip("_"))
def test_the_validator_refuses_a_broken_copy(break_it: Callable[[dict[str, Any]], None]):
    document = load_compose()
    broken = copy.deepcopy(document)
    break_it(broken)
    assert spec_errors(broken), "the schema accepted a broken compose file"


# --- what the specification cannot know: the deployment's own rules --------------------------


def test_every_setting_comes_from_env_so_a_relay_is_an_env_change():
    services = load_compose()["services"]
    for name in APP_SERVICES:
        service = services[name]
        assert service["env_file"] == ".env", name
        # `environment` would override .env: a relay set in .env would then be ignored.
        assert not any(k.startswith("DIGEST_") for k in service.get("environment", {})), name
    assert "DIGEST_" not in json.dumps(services["postgres"])


def test_services_restart_wait_for_migrate_and_check_their_health():
    services = load_compose()["services"]
    assert services["migrate"]["restart"] == "no"
    for name, service in services.items():
        if name != "migrate":
            assert service["restart"] == "unless-stopped", name
        for target, rule in service.get("depends_on", {}).items():
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits on {target}'s health"
    for name in ("web", "worker", "beat"):
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }
    for name in ("postgres", "redis", "web", "worker", "beat", "flower"):
        assert services[name]["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name


def test_images_are_pinned_and_ports_are_on_loopback():
    services = load_compose()["services"]
    for name, service in services.items():
        image = service["image"]
        if "build" in service:
            continue
        # A release (postgres 16.15, redis 8.2.9, mailpit v1.30.5), not latest nor a major line.
        assert re.fullmatch(r"[^:]+:v?\d+\.\d+(\.\d+)?(-[a-z0-9.]+)?", image), f"{name}: {image}"
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond this host"
    assert services["mailpit"]["ports"] == ["127.0.0.1:8025:8025"]  # its SMTP port: not at all
    assert services["flower"]["ports"] == ["127.0.0.1:5555:5555"]
    assert services["web"]["ports"] == ["${WEB_ADDRESS:-127.0.0.1:8000}:8000"]


# --- .env.example and scripts/init-env ---------------------------------------------------------


def deployment_folder(tmp_path: Path) -> Path:
    """What a deployer has: compose.yaml, .env.example and scripts/init-env (run it after)."""
    folder = tmp_path / "deploy"
    (folder / "scripts").mkdir(parents=True)
    for name in ("compose.yaml", ".env.example", "scripts/init-env"):
        shutil.copy2(ROOT / name, folder / name)
    return folder


def init_env(folder: Path) -> str:
    result = subprocess.run(
        [str(folder / "scripts" / "init-env")], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.integration
def test_init_env_makes_the_secrets_once_and_never_replaces_them(tmp_path):
    folder = deployment_folder(tmp_path)
    assert "added DIGEST_SECRET_KEY" in init_env(folder)
    env_file = folder / ".env"
    first = dotenv_values(env_file)
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert len(first["DIGEST_SECRET_KEY"] or "") == 64
    password = first["POSTGRES_PASSWORD"]
    assert password and len(password) == 32
    assert first["DIGEST_DATABASE_URL"] == f"postgresql://digest:{password}@postgres:5432/digest"
    assert (first["FLOWER_BASIC_AUTH"] or "").startswith("digest:")

    # Run again (by habit, or after an upgrade): nothing changes.
    second_run = init_env(folder)
    assert "kept DIGEST_SECRET_KEY" in second_run and "added" not in second_run
    assert dotenv_values(env_file) == first

    # A deployer who already had a key in .env keeps it; only what is missing is added.
    env_file.write_text("DIGEST_SECRET_KEY=an-older-key-kept-since-the-first-mail\n")
    init_env(folder)
    kept = dotenv_values(env_file)
    assert kept["DIGEST_SECRET_KEY"] == "an-older-key-kept-since-the-first-mail"
    assert kept["POSTGRES_PASSWORD"] and kept["FLOWER_BASIC_AUTH"]


def settings_from(env: dict[str, str | None], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in list(os.environ):
        if name.startswith("DIGEST_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value or "")
    return Settings()


def test_env_example_with_a_key_is_a_valid_production_configuration(monkeypatch):
    env = dotenv_values(ROOT / ".env.example")
    env["DIGEST_SECRET_KEY"] = "k" * 64
    settings = settings_from(env, monkeypatch)
    assert settings.env == "production"
    assert (settings.mailer, settings.smtp_url) == ("smtp", "smtp://mailpit:1025")
    assert settings.redis_url == "redis://redis:6379/0"
    assert env["COMPOSE_PROFILES"] == "mailpit"
    # The relay: one line of .env.
    env["DIGEST_SMTP_URL"] = "smtp://user:p%40ss@smtp.example.org:587?starttls=1"
    assert settings_from(env, monkeypatch).smtp_url.startswith("smtp://user:")
    # Without the key, production refuses to start (compose passes .env as it is).
    del env["DIGEST_SECRET_KEY"]
    with pytest.raises(ValueError, match="DIGEST_SECRET_KEY"):
        settings_from(env, monkeypatch)


# --- Debian's docker-compose: interpolation, env_file, references ------------------------------


def docker_compose() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        if REQUIRE_SERVICES:
            pytest.fail(
                "docker-compose is required (DIGEST_TEST_REQUIRE_SERVICES=1): .ci/run installs it"
            )
        pytest.skip("docker-compose not installed (apt-get install docker-compose)")
    return found


def compose_config(folder: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIGEST_", "COMPOSE_"))}
    return subprocess.run(
        [docker_compose(), "config", "-q"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.integration
def test_docker_compose_config_accepts_the_deployment_and_refuses_a_broken_one(tmp_path):
    folder = deployment_folder(tmp_path)
    missing = compose_config(folder)  # before scripts/init-env: no .env
    assert missing.returncode != 0 and ".env" in missing.stderr
    init_env(folder)
    result = compose_config(folder)
    assert result.returncode == 0, result.stderr
    for break_it in BREAKAGES:
        document = load_compose()
        break_it(document)
        (folder / "compose.yaml").write_text(yaml.safe_dump(document))
        assert compose_config(folder).returncode != 0, break_it.__name__


# --- the migrate service's command, on PostgreSQL ---------------------------------------------


@pytest.fixture
def fresh_postgres_database() -> Iterator[str]:
    """An empty database of its own, as compose's postgres service starts with."""
    if not POSTGRES_ADMIN_URL:
        service_missing("PostgreSQL (DIGEST_TEST_POSTGRES_URL)")
    import psycopg

    name = f"digest_compose_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def service_env(folder: Path, **overrides: str) -> dict[str, str]:
    """A container's environment: the process's own (PATH), none of the test run's DIGEST_
    variables, then .env as compose passes it, then what only compose's network would give."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    env.update({k: v or "" for k, v in dotenv_values(folder / ".env").items()})
    env.update(overrides)
    return env


@pytest.mark.integration
def test_migrate_upgrades_an_empty_database_and_seeds_it_once(tmp_path, fresh_postgres_database):
    folder = deployment_folder(tmp_path)
    init_env(folder)
    command = load_compose()["services"]["migrate"]["command"]
    env = with_venv_path(service_env(folder, DIGEST_DATABASE_URL=fresh_postgres_database))

    def migrate() -> str:
        result = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
        return result.stdout

    first = migrate()
    assert "upgraded an empty database" in first and "119 new" in first
    second = migrate()  # every `docker compose up`
    assert "already at" in second and "seeds not loaded" in second
    import psycopg

    with psycopg.connect(fresh_postgres_database) as conn:
        count = conn.execute("SELECT count(*) FROM paper").fetchone()
    assert count == (119,)


# --- worker and beat healthchecks, against real processes -------------------------------------


def healthcheck(service: dict[str, Any], hostname: str) -> subprocess.CompletedProcess[str]:
    """The service's healthcheck as the container runs it: compose turns $$ into $, and
    $HOSTNAME is the container's host name, which %h in the node name expands to."""
    kind, line = service["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    env = with_venv_path({**os.environ, "HOSTNAME": hostname})
    return subprocess.run(
        ["sh", "-c", line.replace("$$", "$")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


class ServiceProcess:
    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, cwd: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            args, cwd=cwd, env=with_venv_path(env), stdout=self._log, stderr=subprocess.STDOUT
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, seconds: float = 90) -> None:
        deadline = time.monotonic() + seconds
        while text not in self.log():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in the log:\n{self.log()}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture
def process_settings(tmp_path: Path, redis_url: str) -> Iterator[Settings]:
    settings = make_settings(
        tmp_path, redis_url=redis_url, task_queue=f"digest-test-{uuid.uuid4().hex[:8]}"
    )
    yield settings
    import redis

    redis.Redis.from_url(redis_url).delete(settings.task_queue)  # what beat may have queued


def node_command(service: dict[str, Any], host: str) -> list[str]:
    """The service's command with %h (the container's host name) as `host`: a name of its
    own, so that no other process on this Redis answers for it."""
    return [part.replace("%h", host) for part in service["command"]]


@pytest.mark.integration
def test_the_worker_healthcheck_answers_for_its_own_live_worker_only(tmp_path, process_settings):
    service = load_compose()["services"]["worker"]
    host = f"test-{uuid.uuid4().hex[:8]}"
    # One process instead of one per core, on the shared test machine.
    args = [*node_command(service, host), "--pool=solo"]
    worker = ServiceProcess(args, worker_env(process_settings), tmp_path / "worker.log", ROOT)
    try:
        worker.wait_for("ready.")
        assert f"worker@{host}" in worker.log()
        healthy = healthcheck(service, host)
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        assert healthcheck(service, f"other-{host}").returncode != 0
        worker.stop()
        assert healthcheck(service, host).returncode != 0
    finally:
        worker.stop()


@pytest.mark.integration
def test_the_beat_healthcheck_fails_once_beat_hangs(tmp_path, process_settings):
    service = load_compose()["services"]["beat"]
    host = f"test-{uuid.uuid4().hex[:8]}"
    # Its schedule file where the container keeps it on a volume: here, in this test's folder.
    args = [p.replace("/var/lib/digest", str(tmp_path)) for p in node_command(service, host)]
    beat = ServiceProcess(args, worker_env(process_settings), tmp_path / "beat.log", ROOT)
    try:
        beat.wait_for("beat pidbox: Connected")
        healthy = healthcheck(service, host)
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr + beat.log()
        assert (tmp_path / "celerybeat-schedule").exists() or list(
            tmp_path.glob("celerybeat-schedule*")
        )
        beat.process.send_signal(signal.SIGSTOP)  # hung: alive, but neither ticking nor answering
        assert healthcheck(service, host).returncode != 0
    finally:
        beat.stop()


# --- Flower, from the task events -------------------------------------------------------------


def get(url: str, auth: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.integration
def test_flower_shows_the_tasks_a_worker_ran(tmp_path, celery_settings, celery_client):
    from tests.conftest import start_worker

    service = load_compose()["services"]["flower"]
    port = free_port()
    args = [p.replace("--port=5555", f"--port={port}") for p in service["command"]]
    auth = f"digest:{uuid.uuid4().hex}"
    env = {**worker_env(celery_settings), "FLOWER_BASIC_AUTH": auth, "FLOWER_ADDRESS": "127.0.0.1"}
    flower = ServiceProcess(args, env, tmp_path / "flower.log", ROOT)
    worker = start_worker(celery_settings, tmp_path / "worker.log")
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if get(f"{base}/healthcheck")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and flower.process.poll() is None, flower.log()
            time.sleep(0.5)
        # compose's healthcheck command, on this port.
        probe = service["healthcheck"]["test"][-1].replace(":5555/", f":{port}/")
        assert subprocess.run([sys.executable, "-c", probe], timeout=30).returncode == 0
        assert get(f"{base}/api/tasks")[0] == 401  # no password, no task list
        time.sleep(2)  # Flower's event receiver subscribes once it has started
        sent = celery_client.send_task("workers.tasks.sweep")
        sent.get(timeout=60)
        deadline = time.monotonic() + 30
        while True:
            status, body = get(f"{base}/api/tasks", auth)
            tasks = json.loads(body) if status == 200 else {}
            if tasks.get(sent.id, {}).get("state") == "SUCCESS":
                break
            assert time.monotonic() < deadline, f"{status} {tasks}\n{flower.log()}"
            time.sleep(0.5)
        assert tasks[sent.id]["name"] == "workers.tasks.sweep"
        assert tasks[sent.id]["worker"].startswith("w1-")
    finally:
        flower.stop()
        worker.stop()
