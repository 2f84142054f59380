"""The admin CLI as a user runs it: the installed `digest` command in a fresh folder."""

import datetime as dt
import json
import os
import subprocess
import sys
from email import message_from_bytes, policy
from pathlib import Path

import pytest

DIGEST = str(Path(sys.executable).parent / "digest")


def run(args, cwd, env_extra=None, check=True):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    env.update(env_extra or {})
    result = subprocess.run(
        [DIGEST, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    if check and result.returncode != 0:
        raise AssertionError(f"digest {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def test_readme_main_command_writes_parseable_digests_to_the_outbox(tmp_path):
    out = run(["demo"], cwd=tmp_path).stdout
    assert (tmp_path / "digest.db").exists()
    files = list((tmp_path / "outbox").glob("*.eml"))
    assert len(files) == 1
    assert f"Your digest is in {files[0].resolve()}" in out
    message = message_from_bytes(files[0].read_bytes(), policy=policy.default)
    assert message["To"] == "demo@example.com"
    assert message.is_multipart()
    assert {p.get_content_type() for p in message.iter_parts()} == {"text/plain", "text/html"}
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsubscribe = message["List-Unsubscribe"]
    assert unsubscribe.startswith("<http") and "<mailto:" in unsubscribe
    assert "/unsubscribe/" in unsubscribe
    assert message["Message-ID"] and message["Date"]
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    # Each pick says why: "matches" when it is close to a topic in meaning, "related to" else.
    picks = text.count("\n   Why: ")
    assert picks >= 5
    assert text.count("Why: matches '") + text.count("Why: related to '") == picks
    assert text.count("Why: matches '") >= 1
    assert "Unsubscribe:" in text and 'href="http://127.0.0.1:8000/unsubscribe/' in html
    # A second run starts the demo subscriber afresh and writes a second digest.
    run(["demo"], cwd=tmp_path)
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 2


def test_subscribers_send_preview_and_status(tmp_path):
    run(["seeds", "load"], cwd=tmp_path)
    run(
        [
            "subscribers",
            "add",
            "ada@example.com",
            "--topic",
            "diffusion models",
            "--topic",
            "video generation",
            "--timezone",
            "Europe/Paris",
            "--hour",
            "0",
        ],
        cwd=tmp_path,
    )
    run(["subscribers", "add", "bob@example.com", "--topic", "volcanic seismology"], cwd=tmp_path)
    weekly = ["subscribers", "add", "cy@example.com", "--topic", "x", "--weekly", "2", "--pending"]
    run(weekly, cwd=tmp_path)
    listing = run(["subscribers", "list"], cwd=tmp_path).stdout
    assert "ada@example.com\tactive\tdaily 00:00 Europe/Paris\tdiffusion models; video" in listing
    assert "cy@example.com\tpending\tweekly Wednesday 07:00 UTC\tx" in listing
    run(["subscribers", "remove", "cy@example.com"], cwd=tmp_path)

    bad = run(["subscribers", "add", "not-an-address", "--topic", "x"], cwd=tmp_path, check=False)
    assert bad.returncode != 0 and "not valid" in bad.stderr

    today = dt.datetime.now(dt.UTC).date().isoformat()  # the seeds were first seen now
    dry = run(["send", "--date", today, "--dry-run"], cwd=tmp_path).stdout
    assert "would send 1, skipped 1" in dry
    assert "bob@example.com: no new paper above the relevance threshold" in dry
    assert not (tmp_path / "outbox").exists()

    preview = run(["preview", "ada@example.com", "--out", "p.html"], cwd=tmp_path).stdout
    assert "Preview written to" in preview
    assert "<h2" in (tmp_path / "p.html").read_text()

    sent = run(["send", "--email", "ada@example.com", "--date", today], cwd=tmp_path)
    assert "sent 1, skipped 0, failed 0" in sent.stdout
    again = run(["send", "--email", "ada@example.com", "--date", today], cwd=tmp_path)
    assert f"ada@example.com: already sent for {today}" in again.stdout

    status = run(["status"], cwd=tmp_path).stdout
    assert status.count(" send ") == 2
    assert f"digest date {today}: sent 1, skipped 0, failed 0, retrying 0" in status
    assert f"digest date {today}: sent 0, skipped 1, failed 0, retrying 0" in status
    assert "    skipped 1: already sent" in status
    assert "{" not in status  # readable lines, not the summary's JSON
    assert f"deliveries for {today}: sent 1" in status

    run(["subscribers", "remove", "bob@example.com"], cwd=tmp_path)
    assert "bob@example.com" not in run(["subscribers", "list"], cwd=tmp_path).stdout
    missing = run(["subscribers", "remove", "bob@example.com"], cwd=tmp_path, check=False)
    assert missing.returncode != 0 and "No subscriber" in missing.stderr


def test_papers_import_reports_bad_lines_and_keeps_good_ones(tmp_path):
    good = {"id": "2606.00001", "title": "Good paper", "abstract": "A", "authors": ["X"]}
    (tmp_path / "in.jsonl").write_text(
        json.dumps(good) + "\n{broken\n" + json.dumps({"title": ""}) + "\n"
    )
    result = run(["papers", "import", "in.jsonl"], cwd=tmp_path)
    assert "1 new, 0 updated, 0 unchanged, 2 bad lines" in result.stdout
    assert "line 2:" in result.stderr and "line 3:" in result.stderr
    exported = run(["papers", "export"], cwd=tmp_path).stdout.splitlines()
    assert [json.loads(line)["id"] for line in exported] == ["2606.00001"]


@pytest.mark.parametrize("args", [["send", "--date", "yesterday"], ["preview", "x@example.com"]])
def test_bad_arguments_get_a_clear_error(tmp_path, args):
    result = run(args, cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert "Error" in result.stderr and "Traceback" not in result.stderr


def test_status_says_how_long_an_unfinished_run_has_been_running(tmp_path):
    """A run whose process died never records its end; status shows its age, not just
    "running", so that an operator sees it is stale."""
    from sqlmodel import Session

    from digest.db import create_schema, make_engine
    from digest.models import Run

    engine = make_engine(f"sqlite:///{tmp_path / 'digest.db'}")
    create_schema(engine)
    started = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3, minutes=7)
    with Session(engine) as session:
        session.add(Run(kind="send", started_at=started))
        session.add(Run(kind="send", started_at=started, finished_at=started, status="ok"))
        session.commit()
    engine.dispose()
    status = run(["status"], cwd=tmp_path).stdout
    assert " send   " in status
    assert "running for 3 h 07 min" in status or "running for 3 h 08 min" in status
    assert status.count("running") == 1 and " ok: " in status
