"""The worker and beat log through configure_logging (Celery's setup_logging signal): our format,
our level, tokens redacted, in real processes."""

import json
import os
import subprocess
import sys
import time

import pytest

from digest.db import create_schema, make_engine
from tests.conftest import ROOT, start_worker, worker_env

pytestmark = pytest.mark.integration


def test_a_worker_logs_json_lines_with_the_ingest_results(tmp_path, celery_settings, celery_client):
    settings = celery_settings.model_copy(
        update={"log_format": "json", "ingest_sources": ["seeds"]}
    )
    engine = make_engine(settings.database_url)
    create_schema(engine)
    engine.dispose()
    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        result = celery_client.send_task("workers.tasks.ingest", kwargs={"source": "seeds"})
        (run,) = result.get(timeout=60)["runs"]
        assert run["status"] == "ok" and run["new"] == 119
        deadline = time.monotonic() + 20
        while "ingest.finished" not in worker.log() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        worker.stop()
    records = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    finished = next(r for r in records if r.get("event") == "ingest.finished")
    assert finished["source"] == "seeds" and finished["new"] == 119 and finished["level"] == "INFO"
    assert finished["logger"] == "digest.ingestion"
    # Celery's own lines come through the same handler, in the same format.
    assert any(r["logger"].startswith("celery") and "ready" in r["message"] for r in records)


def test_beat_logs_at_the_configured_level_in_text(tmp_path, celery_settings):
    env = {**worker_env(celery_settings), "DIGEST_LOG_LEVEL": "DEBUG"}
    schedule = tmp_path / "beat-schedule"
    beat = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers", "beat", "-s", str(schedule)],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(8)
    finally:
        beat.terminate()
        output, _ = beat.communicate(timeout=20)
    lines = [line for line in output.splitlines() if " celery.beat: " in line]
    assert lines, output
    assert any(" DEBUG celery.beat: " in line for line in lines), output
    assert all(line[:4].isdigit() and "+00:00 " in line for line in lines)
