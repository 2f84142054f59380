"""Subscribing as issue 5 asks: schedule and time zone on the form, topic suggestions, double
opt-in that expires and reveals nothing, nothing sent before confirmation, rate limits, and a
web app that refuses the default secret key outside development."""

import datetime as dt
import os
import subprocess
import sys
import uuid
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from freezegun import freeze_time
from sqlalchemy import event
from sqlmodel import Session

from digest import delivery, paperstore
from digest import subscribers as subscriber_store
from digest.config import DEV_SECRET_KEY
from digest.mailer import FileMailer, SMTPConfig, SMTPMailer
from digest.models import SubscriberStatus
from digest.suggestions import suggest_topics
from digest.web import InsecureSecretKey, create_app
from tests.conftest import free_port, make_settings
from tests.factories import NOW, make_paper
from tests.test_cli import run
from tests.test_web import csrf_from, link_in, subscribers

WAITRESS = str(Path(sys.executable).parent / "waitress-serve")


def smtp_app(settings, engine, smtp_server, **overrides):
    if overrides:
        settings = settings.model_copy(update=overrides)
    mailer = SMTPMailer(SMTPConfig(host=smtp_server.host, port=smtp_server.port))
    app = create_app(settings, engine=engine, mailer=mailer, clock=lambda: NOW)
    app.config["TESTING"] = True
    return app


def post_subscribe(client, ip="198.51.100.7", **fields):
    page = client.get("/", environ_base={"REMOTE_ADDR": ip}).get_data(as_text=True)
    data = {"csrf_token": csrf_from(page), "topics": "diffusion models", **fields}
    return client.post("/subscribe", data=data, environ_base={"REMOTE_ADDR": ip})


def test_schedule_and_time_zone_from_the_form_apply_once_confirmed(
    engine, db_settings, smtp_server
):
    client = smtp_app(db_settings, engine, smtp_server).test_client()
    r = post_subscribe(
        client,
        email="ada@example.com",
        topics="diffusion models\nrobot learning",
        frequency="weekly",
        weekly_day="4",
        send_hour="18",
        timezone="Asia/Tokyo",
    )
    assert r.status_code == 200
    # Pending subscribers already carry what they asked for (nothing is sent to them anyway).
    pending = subscribers(engine)["ada@example.com"]
    assert (pending.status, pending.frequency, pending.timezone) == (
        "pending",
        "weekly",
        "Asia/Tokyo",
    )
    confirm = link_in(smtp_server.to("ada@example.com")[0], "confirm")
    page = client.get(confirm).get_data(as_text=True)
    assert client.post(confirm, data={"csrf_token": csrf_from(page)}).status_code == 200
    sub = subscribers(engine)["ada@example.com"]
    assert (sub.status, sub.frequency, sub.weekly_day, sub.send_hour, sub.timezone) == (
        "active",
        "weekly",
        4,
        18,
        "Asia/Tokyo",
    )
    assert sub.topics == ["diffusion models", "robot learning"]


def test_without_schedule_fields_the_server_defaults_apply(engine, db_settings, smtp_server):
    app = smtp_app(
        db_settings, engine, smtp_server, default_send_hour=9, default_timezone="Europe/Paris"
    )
    client = app.test_client()
    page = client.get("/").get_data(as_text=True)
    # The form is pre-filled with the defaults: a browser without JavaScript posts them.
    assert '<option value="9" selected>09:00</option>' in page
    assert "<option selected>Europe/Paris</option>" in page
    r = client.post(
        "/subscribe",
        data={"csrf_token": csrf_from(page), "email": "bo@example.com", "topics": "robots"},
    )
    assert r.status_code == 200
    sub = subscribers(engine)["bo@example.com"]
    assert (sub.frequency, sub.send_hour, sub.timezone) == ("daily", 9, "Europe/Paris")


def test_subscribe_page_suggests_topics_from_stored_papers(engine, db_settings, smtp_server):
    app = smtp_app(db_settings, engine, smtp_server)
    assert 'class="suggestions"' not in app.test_client().get("/").get_data(as_text=True)
    with Session(engine) as session:
        paperstore.load_seeds(session=session, settings=db_settings, now=NOW)
    # The suggestions are cached for ten minutes: a fresh app sees the new papers.
    page = smtp_app(db_settings, engine, smtp_server).test_client().get("/").get_data(as_text=True)
    assert 'data-topic="diffusion models"' in page and 'data-topic="scaling laws"' in page


def test_suggest_topics_prefers_recurring_phrases_and_keywords():
    papers = [
        ("Scaling laws for diffusion models", []),
        ("Diffusion models beat GANs", ["image synthesis"]),
        ("Fast sampling of diffusion models", ["image synthesis"]),
        ("A unique title about nothing", []),
        ("Scaling laws revisited", []),
    ]
    topics = suggest_topics(papers)
    assert topics == ["diffusion models", "image synthesis", "scaling laws"]
    assert suggest_topics(papers, min_count=3) == ["diffusion models", "image synthesis"]
    assert suggest_topics([]) == []


# --- double opt-in ---------------------------------------------------------------------------


def test_confirmation_link_expires(tmp_path, engine):
    settings = make_settings(tmp_path, confirm_max_age=3600)
    app = create_app(settings, engine=engine, mailer=FileMailer(settings.outbox_dir))
    app.config["TESTING"] = True
    client = app.test_client()
    start = dt.datetime(2026, 6, 12, 8, 0, tzinfo=dt.UTC)
    with freeze_time(start):
        page = client.get("/").get_data(as_text=True)
        client.post(
            "/subscribe",
            data={"csrf_token": csrf_from(page), "email": "ex@example.com", "topics": "robots"},
        )
    (eml,) = settings.outbox_dir.glob("*.eml")
    confirm = link_in(message_from_bytes(eml.read_bytes(), policy=policy.default), "confirm")
    with freeze_time(start + dt.timedelta(seconds=3601)):
        for method in (client.get, client.post):
            r = method(confirm, data={"csrf_token": csrf_from(page)})
            assert r.status_code == 400 and "This link has expired" in r.get_data(as_text=True)
    assert subscribers(engine)["ex@example.com"].status == SubscriberStatus.PENDING
    with freeze_time(start + dt.timedelta(seconds=3599)):
        r = client.post(confirm, data={"csrf_token": csrf_from(page)})
        assert r.status_code == 200
    assert subscribers(engine)["ex@example.com"].status == SubscriberStatus.ACTIVE


def _statements(engine):
    """Record the verb of every SQL statement and every commit on `engine`."""
    seen: list[str] = []

    def on_execute(conn, cursor, statement, *args):
        seen.append(statement.split(None, 1)[0].upper())

    def on_commit(conn):
        seen.append("COMMIT")

    event.listen(engine, "before_cursor_execute", on_execute)
    event.listen(engine, "commit", on_commit)

    def stop():
        event.remove(engine, "before_cursor_execute", on_execute)
        event.remove(engine, "commit", on_commit)

    return seen, stop


ADDRESSES = ("new@example.com", "active@example.com", "pending@example.com", "gone@example.com")


def test_known_and_unknown_addresses_get_the_same_page_the_same_work_and_one_mail(
    engine, db_settings, smtp_server
):
    with Session(engine) as session:
        subscriber_store.add_subscriber(
            session=session, email="active@example.com", topics=["x"], now=NOW
        )
        subscriber_store.add_subscriber(
            session=session,
            email="pending@example.com",
            topics=["y"],
            now=NOW,
            status=SubscriberStatus.PENDING,
        )
        gone = subscriber_store.add_subscriber(
            session=session, email="gone@example.com", topics=["z"], now=NOW
        )
        subscriber_store.unsubscribe(session=session, subscriber_id=gone.id, now=NOW)
    before = {e: (s.status, s.topics) for e, s in subscribers(engine).items()}
    client = smtp_app(db_settings, engine, smtp_server).test_client()
    pages, work = [], []
    for email in (
        "new@example.com",
        "active@example.com",
        "pending@example.com",
        "gone@example.com",
    ):
        page = client.get("/").get_data(as_text=True)
        seen, stop = _statements(engine)
        try:
            r = client.post(
                "/subscribe",
                data={"csrf_token": csrf_from(page), "email": email, "topics": "robots"},
            )
        finally:
            stop()
        pages.append((r.status_code, r.get_data(as_text=True).replace(email, "ADDR")))
        # Same work: one lookup, then one write of one row in one commit, whatever is known.
        work.append(["WRITE" if verb in ("INSERT", "UPDATE") else verb for verb in seen])
    assert all(p == pages[0] for p in pages) and pages[0][0] == 200
    assert all(w == work[0] for w in work), work
    assert work[0].count("WRITE") == 1 and work[0].count("COMMIT") == 1
    for email in (
        "new@example.com",
        "active@example.com",
        "pending@example.com",
        "gone@example.com",
    ):
        (message,) = smtp_server.to(email)
        assert "/confirm/" in message.get_body(("plain",)).get_content()
    # Known addresses keep their status and topics until the new request is confirmed.
    after = {e: (s.status, s.topics) for e, s in subscribers(engine).items()}
    assert {e: after[e] for e in before} == before
    assert after["new@example.com"] == ("pending", ["robots"])


def test_nothing_is_sent_to_an_unconfirmed_address(engine, db_settings, smtp_server):
    with Session(engine) as session:
        paperstore.upsert_papers(
            session=session,
            now=NOW,
            papers=[
                make_paper(title=f"Diffusion models, part {n}", abstract="Diffusion models.")
                for n in range(3)
            ],
        )
    client = smtp_app(db_settings, engine, smtp_server).test_client()
    assert post_subscribe(client, email="wait@example.com").status_code == 200
    settings = db_settings.model_copy(update={"mailer": "smtp", "smtp_url": smtp_server.url})
    mailer = SMTPMailer(SMTPConfig(host=smtp_server.host, port=smtp_server.port))

    def send(**kwargs):
        with Session(engine) as session:
            return delivery.send_due_digests(
                session=session, mailer=mailer, settings=settings, now=NOW, **kwargs
            )

    # Not by the schedule, not for a date, not on demand for the address.
    for kwargs in ({}, {"digest_date": NOW.date()}, {"email": "wait@example.com"}):
        summary = send(**kwargs)
        assert summary.sent == [] and ("wait@example.com", "not confirmed yet") in summary.skipped
    (only,) = smtp_server.to("wait@example.com")
    assert only["Subject"].startswith("Confirm your subscription")
    # Once confirmed the same send delivers: the check above could fail.
    confirm = link_in(smtp_server.to("wait@example.com")[0], "confirm")
    page = client.get(confirm).get_data(as_text=True)
    client.post(confirm, data={"csrf_token": csrf_from(page)})
    assert [email for email, _ in send(digest_date=NOW.date()).sent] == ["wait@example.com"]
    assert "List-Unsubscribe" in smtp_server.to("wait@example.com")[1]


# --- rate limits -----------------------------------------------------------------------------


def test_one_target_address_cannot_be_bombed_from_many_clients(engine, db_settings, smtp_server):
    client = smtp_app(
        db_settings, engine, smtp_server, subscribe_limit_per_address="2/hour"
    ).test_client()
    for n in range(2):
        assert post_subscribe(client, ip=f"203.0.113.{n}", email="v@example.com").status_code == 200
    # Another client, the same address in another spelling: still the same target.
    r = post_subscribe(client, ip="203.0.113.9", email=" V@Example.COM ")
    assert r.status_code == 429
    body = r.get_data(as_text=True)
    assert "Too many requests" in body and "Nothing was sent" in body
    assert len(smtp_server.to("v@example.com")) == 2
    # Other addresses are not affected.
    assert post_subscribe(client, ip="203.0.113.9", email="w@example.com").status_code == 200


def test_one_client_cannot_subscribe_address_after_address(engine, db_settings, smtp_server):
    client = smtp_app(
        db_settings, engine, smtp_server, subscribe_limit_per_client="3/hour"
    ).test_client()
    for n in range(3):
        assert post_subscribe(client, email=f"a{n}@example.com").status_code == 200
    before = subscribers(engine)
    r = post_subscribe(client, email="a9@example.com")
    assert r.status_code == 429 and "Too many requests" in r.get_data(as_text=True)
    assert subscribers(engine).keys() == before.keys() and len(smtp_server.messages) == 3
    assert post_subscribe(client, ip="192.0.2.1", email="a9@example.com").status_code == 200


@pytest.mark.parametrize("hops", [0, 1])
def test_forwarded_for_is_trusted_only_behind_a_configured_proxy(
    engine, db_settings, smtp_server, hops
):
    client = smtp_app(
        db_settings,
        engine,
        smtp_server,
        subscribe_limit_per_client="2/hour",
        trusted_proxy_hops=hops,
    ).test_client()

    def post(n):
        page = client.get("/").get_data(as_text=True)
        return client.post(
            "/subscribe",
            data={"csrf_token": csrf_from(page), "email": f"f{n}@example.com", "topics": "x"},
            # Without a trusted proxy this header is the client's own claim: ignored.
            headers={"X-Forwarded-For": f"192.0.2.{n}"},
        )

    codes = [post(n).status_code for n in range(3)]
    assert codes == ([200, 200, 429] if hops == 0 else [200, 200, 200])


def test_limits_are_shared_through_redis_across_web_processes(
    tmp_path, engine, smtp_server, redis_url
):
    settings = make_settings(
        tmp_path,
        rate_limit_storage_url=redis_url,
        task_queue=f"limits-{uuid.uuid4().hex[:8]}",
        subscribe_limit_per_address="2/hour",
    )
    first, second = (smtp_app(settings, engine, smtp_server).test_client() for _ in range(2))
    assert post_subscribe(first, email="r@example.com").status_code == 200
    assert post_subscribe(second, ip="192.0.2.50", email="r@example.com").status_code == 200
    assert post_subscribe(first, ip="192.0.2.51", email="r@example.com").status_code == 429
    assert len(smtp_server.to("r@example.com")) == 2


def test_subscribe_fails_closed_when_the_limit_storage_is_unreachable(
    tmp_path, engine, smtp_server
):
    settings = make_settings(tmp_path, rate_limit_storage_url=f"redis://127.0.0.1:{free_port()}/0")
    client = smtp_app(settings, engine, smtp_server).test_client()
    r = post_subscribe(client, email="down@example.com")
    assert r.status_code == 503 and "Nothing was sent" in r.get_data(as_text=True)
    assert subscribers(engine) == {} and smtp_server.messages == []


def test_bad_rate_limit_settings_are_refused_with_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="is not a rate limit like"):
        make_settings(tmp_path, subscribe_limit_per_address="three a day")


# --- the secret key --------------------------------------------------------------------------


@pytest.mark.parametrize("env", ["test", "production"])
def test_web_app_refuses_the_default_secret_key_outside_development(tmp_path, env):
    settings = make_settings(tmp_path, env="test", secret_key=DEV_SECRET_KEY)
    settings = settings.model_copy(update={"env": env})  # production is refused earlier too
    with pytest.raises(InsecureSecretKey, match="refusing to start with the default"):
        create_app(settings)
    assert not (tmp_path / "digest.db").exists()
    dev = settings.model_copy(update={"env": "development"})
    assert create_app(dev).config["SECRET_KEY"] == DEV_SECRET_KEY


@pytest.mark.integration
@pytest.mark.parametrize(
    ("env", "message"),
    [
        ("test", "refusing to start with the default DIGEST_SECRET_KEY (DIGEST_ENV=test)"),
        ("production", "DIGEST_SECRET_KEY must be set to a long random value"),
    ],
)
def test_digest_serve_and_the_wsgi_entry_point_refuse_the_default_secret_key(
    tmp_path, env, message
):
    port = str(free_port())
    public = {"DIGEST_ENV": env, "DIGEST_SECRET_KEY": DEV_SECRET_KEY}
    served = run(["serve", "--port", port], cwd=tmp_path, env_extra=public, check=False)
    assert served.returncode == 1 and message in served.stderr, served.stderr
    wsgi = subprocess.run(
        [WAITRESS, "--port", port, "--call", "digest.web:wsgi_app"],
        cwd=tmp_path,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")},
            **public,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert wsgi.returncode != 0 and message in wsgi.stderr, wsgi.stderr
    assert not (tmp_path / "digest.db").exists()  # refused before touching any store
