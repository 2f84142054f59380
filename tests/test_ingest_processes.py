"""Ingestion as an operator and the scheduler run it: the installed `digest ingest` command and a
real Celery worker process, both fetching from a local server replaying recorded responses."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlmodel import Session, col, select

from digest.db import create_schema, make_engine
from digest.models import Paper, Run
from tests.conftest import start_worker
from tests.fake_sources import Reply, fake_sources_fixture, fixture_bytes  # noqa: F401
from tests.test_cli import run

HF_JUNE = "api-daily-papers-2026-06-12.json"


def source_env(fake, tmp_path) -> dict[str, str]:
    return {
        "DIGEST_DATABASE_URL": f"sqlite:///{tmp_path / 'digest.db'}",
        "DIGEST_HF_DAILY_PAPERS_URL": f"{fake.base_url}/api/daily_papers",
        "DIGEST_ARXIV_RSS_URL": f"{fake.base_url}/rss/",
        "DIGEST_ARXIV_API_URL": f"{fake.base_url}/api/query",
        "DIGEST_HTTP_BACKOFF_SECONDS": "0",
        "DIGEST_HTTP_RETRIES": "1",
    }


def test_digest_ingest_then_status_say_what_came_in_and_why_not(fake_sources, tmp_path):
    fake_sources.route("/api/daily_papers", Reply(fixture_bytes(HF_JUNE)))
    fake_sources.route(
        "/rss/cs.CL",
        Reply(fixture_bytes("rss-cs.CL-weekend-empty-2026-08-01.xml"), content_type="text/xml"),
    )
    env = source_env(fake_sources, tmp_path)
    first = run(["ingest", "--source", "hf", "--date", "2026-06-12"], tmp_path, env).stdout
    assert first.splitlines()[0] == (
        "ok: hf 2026-06-12: fetched 30, new 30, updated 0, bad items 0, failed requests 0/1"
    )
    (request,) = fake_sources.requests
    assert request.query["date"] == ["2026-06-12"]
    assert request.headers["User-Agent"].startswith("digest/")

    items = json.loads(fixture_bytes(HF_JUNE))
    items[0]["paper"]["upvotes"] = 42
    fake_sources.route("/api/daily_papers", Reply(json.dumps(items).encode()))
    second = run(["ingest", "--source", "hf", "--date", "2026-06-12"], tmp_path, env).stdout
    assert "fetched 30, new 0, updated 1" in second
    assert "  no new papers: everything listed was already stored" in second

    weekend = run(["ingest", "--source", "arxiv", "--category", "cs.CL"], tmp_path, env).stdout
    assert "arxiv [cs.CL]: fetched 0, new 0" in weekend
    assert "arXiv announces nothing on Sunday and Saturday" in weekend

    fake_sources.route("/api/daily_papers", Reply(b"<html>down</html>", 503, "text/html"))
    down = run(["ingest", "--source", "hf"], tmp_path, env, check=False)
    assert down.returncode == 1
    assert down.stdout.startswith("failed: hf: fetched 0")
    assert "HTTP 503" in down.stdout and "after 2 attempts" in down.stdout

    status = run(["status"], tmp_path, env).stdout
    assert status.count(" ingest ") == 4
    assert " failed: hf: fetched 0, new 0" in status
    assert "source unavailable" in status
    exported = run(["papers", "export"], tmp_path, env).stdout.splitlines()
    assert len(exported) == 30  # the failed fetch lost nothing
    assert json.loads(exported[0])["source"] == "hf"


def test_digest_ingest_refuses_a_bad_category_or_date(tmp_path):
    bad = run(["ingest", "--source", "arxiv", "--category", "cs LG"], tmp_path, check=False)
    assert bad.returncode == 2 and "is not an arXiv category like cs.LG" in bad.stderr
    bad = run(["ingest", "--date", "12/06/2026"], tmp_path, check=False)
    assert bad.returncode == 2 and "is not a date like" in bad.stderr


def test_beat_schedules_one_ingestion_per_configured_source(settings):
    from workers.schedule import beat_schedule

    configured = settings.model_copy(update={"ingest_sources": ["hf", "arxiv"]})
    schedule = beat_schedule(configured)
    entries = {k: v for k, v in schedule.items() if k.startswith("ingest-")}
    assert {k: v["kwargs"] for k, v in entries.items()} == {
        "ingest-hf": {"source": "hf"},
        "ingest-arxiv": {"source": "arxiv"},
    }
    assert all(v["task"] == "workers.tasks.ingest" for v in entries.values())
    # Before the morning: ingestion runs before the earliest default send hour.
    assert all(v["schedule"].hour == {settings.ingest_hour_utc} for v in entries.values())
    assert settings.ingest_hour_utc < settings.default_send_hour


@pytest.mark.integration
def test_a_worker_process_runs_the_ingest_task(
    tmp_path, fake_sources, celery_settings, celery_client
):
    fake_sources.route("/api/daily_papers", Reply(fixture_bytes(HF_JUNE)))
    extra = source_env(fake_sources, tmp_path)
    extra.pop("DIGEST_DATABASE_URL")  # the worker uses celery_settings' store
    worker = start_worker(celery_settings, tmp_path / "worker.log", extra_env=extra)
    try:
        result = celery_client.send_task(
            "workers.tasks.ingest", kwargs={"source": "hf", "day": "2026-06-12"}
        ).get(timeout=60)
        # The ingest run queues the encoding of its new papers.
        embedded = wait_for_embeddings(celery_settings.database_url, 30, timeout=180)
    finally:
        worker.stop()
    (summary,) = result["runs"]
    assert (summary["status"], summary["new"], summary["date"]) == ("ok", 30, "2026-06-12")
    assert embedded == 30
    engine = make_engine(celery_settings.database_url)
    create_schema(engine)
    with Session(engine) as session:
        assert len(session.exec(select(Paper)).all()) == 30
        paper = session.get(Paper, "2606.00467")
        assert paper is not None and paper.first_seen == dt.datetime(2026, 6, 12, tzinfo=dt.UTC)
    engine.dispose()


def wait_for_embeddings(database_url: str, count: int, *, timeout: float) -> int:
    import time

    from sqlmodel import func

    from digest.models import PaperEmbedding

    engine = make_engine(database_url)
    create_schema(engine)
    deadline = time.monotonic() + timeout
    try:
        while True:
            with Session(engine) as session:
                done = session.exec(select(func.count()).select_from(PaperEmbedding)).one()
            if done >= count or time.monotonic() > deadline:
                return done
            time.sleep(0.5)
    finally:
        engine.dispose()


def test_papers_import_reads_a_gzipped_corpus_keeps_first_seen_and_reimports_nothing(tmp_path):
    import gzip

    lines = [
        json.dumps(
            {
                "id": f"2606.3{i:04d}",
                "title": f"Corpus paper {i}",
                "summary": "An abstract.",
                "authors": ["A B"],
                "categories": ["cs.CL"],
                "abs": f"https://arxiv.org/abs/2606.3{i:04d}",
                "first_seen": "2026-06-29",
            }
        )
        for i in range(3)
    ] + ['{"title": ']
    corpus = tmp_path / "corpus.jsonl.gz"
    with gzip.open(corpus, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    first = run(["papers", "import", str(corpus)], tmp_path)
    assert first.stdout.strip() == "3 new, 0 updated, 0 unchanged, 1 bad lines"
    assert "Importing corpus.jsonl.gz" in first.stderr and "line 4:" in first.stderr
    again = run(["papers", "import", str(corpus)], tmp_path)
    assert again.stdout.strip() == "0 new, 0 updated, 3 unchanged, 1 bad lines"
    exported = [json.loads(x) for x in run(["papers", "export"], tmp_path).stdout.splitlines()]
    assert [p["first_seen"] for p in exported] == ["2026-06-29T00:00:00Z"] * 3


@pytest.mark.integration
def test_a_worker_tries_a_source_that_was_down_again_later(
    tmp_path, fake_sources, celery_settings, celery_client
):
    fake_sources.route(
        "/api/daily_papers",
        Reply(b"<html>busy</html>", 503, "text/html"),
        Reply(fixture_bytes(HF_JUNE)),
    )
    extra = source_env(fake_sources, tmp_path)
    extra.pop("DIGEST_DATABASE_URL")
    extra.update({"DIGEST_HTTP_RETRIES": "0", "DIGEST_INGEST_RETRY_SECONDS": "1"})
    worker = start_worker(celery_settings, tmp_path / "worker.log", extra_env=extra)
    try:
        result = celery_client.send_task("workers.tasks.ingest", kwargs={"source": "hf"}).get(
            timeout=60
        )
    finally:
        worker.stop()
    (summary,) = result["runs"]
    assert (summary["status"], summary["new"]) == ("ok", 30)
    assert len(fake_sources.requests) == 2
    engine = make_engine(celery_settings.database_url)
    with Session(engine) as session:
        runs = session.exec(select(Run).order_by(col(Run.id))).all()
        assert [(r.status, r.summary["new"]) for r in runs] == [("failed", 0), ("ok", 30)]
        assert "HTTP 503" in runs[0].summary["errors"][0]
    engine.dispose()
