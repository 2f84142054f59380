"""/metrics: the store's numbers for Prometheus (digest/metrics.py), the same from every process,
and who may read them (a bearer token, or only a request made on this host)."""

import datetime as dt
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import Session

from digest.db import make_engine
from digest.metrics import exposition, smtp_outcome, store_registry
from digest.models import Delivery, Run, Subscriber
from digest.web import create_app
from tests.conftest import free_port, make_settings
from tests.factories import NOW, make_paper, store_papers

DIGEST = str(Path(sys.executable).parent / "digest")
TODAY = NOW.date()
METRICS_TOKEN = "metrics-token-0123456789"


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and sorted labels."""
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def fill_store(session: Session) -> None:
    subscribers = []
    for n, status in enumerate(["active"] * 4 + ["suppressed", "suppressed", "unsubscribed"]):
        subscriber = Subscriber(email=f"s{n}@example.com", status=status, created_at=NOW)
        session.add(subscriber)
        subscribers.append(subscriber)
    session.commit()
    rows = [
        (0, TODAY, "sent", None),
        (1, TODAY, "sent", None),
        (2, TODAY, "failed", "SMTP 550 5.1.1 <s2@example.com>: no such user (1 of 3)"),
        (3, TODAY, "failed", "SMTP 451 4.3.0 try later"),
        (4, TODAY, "failed", "SMTP connection lost: Connection reset by peer"),
        (5, TODAY, "skipped", "no new paper above the relevance threshold"),
        (6, TODAY, "planned", None),
        (0, TODAY - dt.timedelta(days=1), "sent", None),
        (0, TODAY - dt.timedelta(days=2), "sent", None),
        (0, TODAY - dt.timedelta(days=5), "sent", None),  # older than the 3 newest dates
    ]
    for n, day, state, reason in rows:
        session.add(
            Delivery(
                subscriber_id=subscribers[n].id,
                digest_date=day,
                state=state,
                reason=reason,
                created_at=NOW,
                updated_at=NOW,
            )
        )
    earlier, later = NOW - dt.timedelta(hours=2), NOW - dt.timedelta(hours=1)
    session.add_all(
        [
            Run(
                kind="ingest",
                started_at=earlier,
                finished_at=earlier,
                status="ok",
                summary={"source": "hf", "new": 12},
            ),
            Run(
                kind="ingest",
                started_at=later,
                finished_at=later,
                status="failed",
                summary={"source": "hf", "new": 0},
            ),
            Run(
                kind="ingest",
                started_at=later,
                finished_at=later,
                status="partial",
                summary={"source": "arxiv", "new": 40},
            ),
            Run(kind="send", started_at=NOW, status="running", summary={}),
            Run(kind="plan", started_at=earlier, finished_at=earlier, status="ok", summary={}),
        ]
    )
    session.commit()
    store_papers(session, [make_paper(), make_paper()])


def test_smtp_outcomes_are_read_from_state_and_reason():
    assert smtp_outcome("sent", None).outcome == "accepted"
    assert smtp_outcome("failed", "SMTP 552 5.2.2 mailbox full") == ("permanent", "552")
    assert smtp_outcome("failed", "SMTP 421 4.4.2 bye") == ("temporary", "421")
    assert smtp_outcome("failed", "SMTP connection failed: refused") == ("temporary", "connection")
    assert smtp_outcome("failed", "rendering failed") == ("other", "")
    assert smtp_outcome("unconfirmed", "no answer after DATA") == ("unconfirmed", "")
    assert smtp_outcome("failed", "bounced: 550 5.1.1 User unknown") == ("bounced", "550")
    assert smtp_outcome("failed", "bounced (soft): 5.2.2 over quota") == ("bounced_soft", "")
    assert smtp_outcome("skipped", "paused") is None and smtp_outcome("planned", None) is None


def test_the_store_metrics_count_what_the_store_holds(engine):
    with Session(engine) as session:
        fill_store(session)
    got = samples(exposition(store_registry(engine)))

    def value(name, **labels):
        return got[(name, tuple(sorted(labels.items())))]

    day = TODAY.isoformat()
    assert value("digest_store_up") == 1
    assert value("digest_deliveries", digest_date=day, state="sent") == 2
    assert value("digest_deliveries", digest_date=day, state="failed") == 3
    assert value("digest_deliveries", digest_date=day, state="skipped") == 1
    assert value("digest_deliveries", digest_date=day, state="sending") == 0
    assert value("digest_smtp_outcomes", digest_date=day, outcome="accepted", code="") == 2
    assert value("digest_smtp_outcomes", digest_date=day, outcome="permanent", code="550") == 1
    assert value("digest_smtp_outcomes", digest_date=day, outcome="temporary", code="451") == 1
    connection = {"digest_date": day, "outcome": "temporary", "code": "connection"}
    assert value("digest_smtp_outcomes", **connection) == 1
    yesterday = (TODAY - dt.timedelta(days=1)).isoformat()
    assert value("digest_smtp_outcomes", digest_date=yesterday, outcome="accepted", code="") == 1
    dates = {dict(labels)["digest_date"] for name, labels in got if name == "digest_deliveries"}
    assert len(dates) == 3 and (TODAY - dt.timedelta(days=5)).isoformat() not in dates
    assert value("digest_subscribers", status="active") == 4
    assert value("digest_subscribers", status="pending") == 0
    assert value("digest_suppressed_addresses") == 2
    later = (NOW - dt.timedelta(hours=1)).timestamp()
    earlier = (NOW - dt.timedelta(hours=2)).timestamp()
    assert value("digest_ingest_last_run_timestamp_seconds", source="hf") == later
    assert value("digest_ingest_last_run_failed", source="hf") == 1
    assert value("digest_ingest_last_run_failed", source="arxiv") == 0
    assert value("digest_ingest_last_run_new_papers", source="arxiv") == 40
    assert value("digest_ingest_last_success_timestamp_seconds", source="hf") == earlier
    assert value("digest_last_run_timestamp_seconds", kind="send") == NOW.timestamp()
    assert value("digest_last_run_timestamp_seconds", kind="plan") == earlier
    assert value("digest_papers_stored") == 2


def test_two_processes_report_the_same_numbers(engine, db_settings):
    with Session(engine) as session:
        fill_store(session)
    # Two web apps, each with its own engine, as two processes behind one address would be.
    bodies = []
    for _ in range(2):
        own = make_engine(str(engine.url.render_as_string(hide_password=False)))
        app = create_app(db_settings, engine=own)
        bodies.append(app.test_client().get("/metrics").get_data())
        own.dispose()
    assert bodies[0] == bodies[1] and b"digest_deliveries{" in bodies[0]


def test_a_store_that_does_not_answer_says_so(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'gone' / 'digest.db'}")
    got = samples(exposition(store_registry(engine)))
    assert got == {("digest_store_up", ()): 0.0}


# --- who may read them -----------------------------------------------------------------------


@pytest.fixture
def local_store(tmp_path):
    from digest.db import create_schema

    settings = make_settings(tmp_path)
    engine = make_engine(settings.database_url)
    create_schema(engine)
    yield settings, engine
    engine.dispose()


def get_metrics(settings, engine, *, peer="127.0.0.1", headers=None):
    app = create_app(settings, engine=engine)
    client = app.test_client()
    return client.get("/metrics", headers=headers or {}, environ_base={"REMOTE_ADDR": peer})


def test_without_a_token_only_a_request_made_on_this_host_is_answered(local_store):
    settings, engine = local_store
    ok = get_metrics(settings, engine)
    assert ok.status_code == 200 and ok.mimetype == "text/plain"
    assert "version=0.0.4" in ok.headers["Content-Type"]
    assert b"digest_store_up 1.0" in ok.data
    assert get_metrics(settings, engine, peer="::1").status_code == 200
    assert get_metrics(settings, engine, peer="203.0.113.9").status_code == 404
    # A reverse proxy on this host forwards requests from anywhere: not a local request.
    proxied = {"X-Forwarded-For": "203.0.113.9"}
    assert get_metrics(settings, engine, headers=proxied).status_code == 404
    assert get_metrics(settings, engine, headers={"Forwarded": "for=1.2.3.4"}).status_code == 404
    # A proxy that adds no header but passes the public host name on.
    public = {"Host": "digest.example.org"}
    assert get_metrics(settings, engine, headers=public).status_code == 404
    assert get_metrics(settings, engine, headers={"Host": "localhost:8000"}).status_code == 200


def test_behind_a_trusted_proxy_the_real_peer_decides(tmp_path, local_store):
    _, engine = local_store
    settings = make_settings(tmp_path, trusted_proxy_hops=1)
    forged = {"X-Forwarded-For": "127.0.0.1"}
    assert get_metrics(settings, engine, peer="203.0.113.9", headers=forged).status_code == 404


def test_with_a_token_every_reader_must_show_it(tmp_path, local_store):
    _, engine = local_store
    settings = make_settings(tmp_path, metrics_token=METRICS_TOKEN)
    refused = get_metrics(settings, engine)  # even from this host
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = {"Authorization": "Bearer metrics-token-wrong-0123"}
    assert get_metrics(settings, engine, headers=wrong).status_code == 401
    basic = {"Authorization": f"Basic {METRICS_TOKEN}"}
    assert get_metrics(settings, engine, headers=basic).status_code == 401
    right = {"Authorization": f"Bearer {METRICS_TOKEN}", "X-Forwarded-For": "203.0.113.9"}
    answered = get_metrics(settings, engine, peer="203.0.113.9", headers=right)
    assert answered.status_code == 200 and b"digest_subscribers" in answered.data


@pytest.mark.integration
def test_digest_serve_keeps_proxy_headers_so_a_proxied_scrape_is_refused(tmp_path):
    """waitress drops X-Forwarded-For by default: `digest serve` must keep it for the app."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    env.update(
        DIGEST_DATABASE_URL=f"sqlite:///{tmp_path / 'digest.db'}",
        DIGEST_SECRET_KEY="serve-test-secret-key-0123456789",
        DIGEST_ENV="test",
    )
    port = free_port()
    server = subprocess.Popen(
        [DIGEST, "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as direct:
                    status, body = direct.status, direct.read()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.2)
        assert status == 200 and b"digest_store_up 1.0" in body
        proxied = urllib.request.Request(url, headers={"X-Forwarded-For": "203.0.113.9"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(proxied, timeout=5)
        refused.value.close()
        assert refused.value.code == 404
    finally:
        server.terminate()
        server.wait(timeout=20)
