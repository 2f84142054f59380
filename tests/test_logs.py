"""Logs (digest/logs.py): one line per event, text or JSON by a setting, configured once per
process, and never a token or a signed link, even from a careless line or a library."""

import io
import json
import logging
import mailbox
import re
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import unquote

import pytest
from pydantic import ValidationError
from sqlmodel import Session, SQLModel

from digest import delivery, inbound
from digest.config import Settings
from digest.db import create_schema, make_engine
from digest.ingestion import ingest_source
from digest.logs import TOKEN, configure_logging, event, redact
from digest.mailer import FileMailer
from digest.tokens import Purpose, make_bounce_token, make_token
from digest.web import create_app
from tests.conftest import SECRET, make_settings
from tests.factories import NOW, diffusion_papers, make_subscriber, store_papers

A_TOKEN = make_token(SECRET, Purpose.UNSUBSCRIBE, {"s": 7})


@pytest.fixture
def captured():
    """configure_logging writing into a buffer; the root logger as it was afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def configure(settings: Settings, level: str | None = "DEBUG") -> io.StringIO:
        buffer = io.StringIO()
        configure_logging(settings, level=level, stream=buffer)
        return buffer

    yield configure
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


# --- redaction -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        f"GET /unsubscribe/{A_TOKEN} 200",
        f"Client disconnected while serving /preferences/{A_TOKEN}",
        f"link https://digest.test/feedback/{A_TOKEN}?paper=2606.00001&vote=up",
        f'{{"url": "https://digest.test/digest/{A_TOKEN}"}}',
        f"Subject: unsubscribe {A_TOKEN}",
        f"mailto:unsubscribe@digest.test?subject=unsubscribe%20{A_TOKEN}",
    ],
)
def test_redact_blanks_signed_links_and_bare_tokens(text):
    assert A_TOKEN in text
    assert A_TOKEN not in redact(text) and "<token>" in redact(text)


def test_redact_blanks_the_signature_of_a_bounce_address_and_keeps_its_delivery_id():
    token = make_bounce_token(SECRET, 1234)
    for address in (f"bounces+{token}@bounces.example.org", f"BOUNCES+{token.upper()}@B.ORG"):
        redacted = redact(f"MAIL FROM:<{address}>")
        assert token.split("-")[1] not in redacted.lower() and "+1234-<token>@" in redacted
    assert redact("ada+news@example.com") == "ada+news@example.com"


def test_redact_blanks_a_cut_off_link_and_keeps_file_paths_and_ids_readable():
    assert redact("GET /confirm/eyJzIjoxfQ.aB") == "GET /confirm/<token>"
    kept = [
        'File "/srv/digest/digest/delivery/send.py", line 12, in send',
        "/opt/app/digest/embedding_store.py",
        "<4f1c2e.digest@digest.test> run=12 source=hf digest.delivery.corpus_cache",
        "https://huggingface.co/api/daily_papers?date=2026-06-12",
    ]
    for text in kept:
        assert redact(text) == text


def test_the_filter_redacts_every_logger_message_exception_and_extra_field(captured):
    buffer = captured(make_settings(Path("/tmp")))
    link = f"https://digest.test/unsubscribe/{A_TOKEN}"
    logging.getLogger("waitress").warning("Client disconnected while serving %s", link)
    logging.getLogger("digest.careless").info("sent %s", link, extra={"link": link})
    try:
        raise ValueError(f"cannot read {A_TOKEN}")
    except ValueError:
        logging.getLogger("celery.worker").exception("task failed for %s", link)
    text = buffer.getvalue()
    assert text.count("/unsubscribe/<token>") == 3 and "ValueError: cannot read <token>" in text
    assert A_TOKEN not in text


def test_without_the_filter_the_scan_would_find_the_token():
    # The scans below can fail: a plain handler lets the token through, and TOKEN finds it.
    buffer = io.StringIO()
    logger = logging.getLogger("digest.test.unfiltered")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logging.StreamHandler(buffer)
    logger.addHandler(handler)
    try:
        logger.warning("sent /unsubscribe/%s", A_TOKEN)
    finally:
        logger.removeHandler(handler)
    assert A_TOKEN in buffer.getvalue() and TOKEN.search(buffer.getvalue())


# --- formats and settings --------------------------------------------------------------------


def test_text_lines_start_with_the_event_then_key_values(captured):
    buffer = captured(make_settings(Path("/tmp"), log_format="text"))
    event(
        logging.getLogger("digest.ingestion"),
        "ingest.finished",
        source="hf",
        new=3,
        empty_reason="everything listed was already stored",
        skipped=None,
    )
    (line,) = buffer.getvalue().splitlines()
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 INFO digest.ingestion: ", line)
    assert line.endswith(
        'ingest.finished source=hf new=3 empty_reason="everything listed was already stored"'
    )


def test_json_lines_carry_the_event_and_its_fields(captured):
    buffer = captured(make_settings(Path("/tmp"), log_format="json"), level="INFO")
    log = logging.getLogger("digest.subscribers")
    event(log, "subscriber.unsubscribed", subscriber=4, via="mail", name="clash")
    log.debug("not at INFO")
    (line,) = buffer.getvalue().splitlines()
    record = json.loads(line)
    assert record["event"] == "subscriber.unsubscribed" and record["level"] == "INFO"
    assert record["logger"] == "digest.subscribers" and record["time"].endswith("+00:00")
    assert record["subscriber"] == 4 and record["via"] == "mail" and record["name_"] == "clash"
    assert record["message"] == "subscriber.unsubscribed subscriber=4 via=mail name=clash"


def test_configuring_again_replaces_the_handler(captured):
    captured(make_settings(Path("/tmp")))
    buffer = captured(make_settings(Path("/tmp"), log_format="json"))
    ours = [h for h in logging.getLogger().handlers if type(h).__name__ == "_DigestHandler"]
    assert len(ours) == 1
    logging.getLogger("digest").warning("once")
    assert len(buffer.getvalue().splitlines()) == 1


def test_log_settings_are_checked(monkeypatch):
    monkeypatch.setenv("DIGEST_LOG_LEVEL", "warning")
    assert Settings().log_level == "WARNING"
    for name, value in [
        ("DIGEST_LOG_FORMAT", "xml"),
        ("DIGEST_LOG_LEVEL", "loud"),
        ("DIGEST_SENTRY_DSN", "sentry.example.org/3"),
        ("DIGEST_METRICS_TOKEN", "short"),
    ]:
        with monkeypatch.context() as env:
            env.setenv(name, value)
            with pytest.raises(ValidationError) as error:
                Settings()
            assert name.removeprefix("DIGEST_").lower() in str(error.value)


# --- a send, the web pages and a mailed unsubscribe: no token in any line --------------------


def _tokens_in(path: Path) -> set[str]:
    return set(TOKEN.findall(_text_of(path)))


def _links(tokens_text: str, path: str) -> list[str]:
    return re.findall(rf"https://digest\.test(/{path}/[^\s\"'<>]+)", tokens_text)


def _text_of(path: Path) -> str:
    message = message_from_bytes(path.read_bytes(), policy=policy.default)
    parts = [str(value) for value in message.values()]
    parts += [
        part.get_content() for part in message.walk() if part.get_content_maintype() == "text"
    ]
    return "\n".join(parts)


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match
    return match.group(1)


def _web_flow(settings, engine, outbox: Path) -> None:
    app = create_app(settings, engine=engine, mailer=FileMailer(outbox), clock=lambda: NOW)
    app.config["PROPAGATE_EXCEPTIONS"] = False
    client = app.test_client()
    before = set(outbox.glob("*.eml"))
    page = client.get("/").get_data(as_text=True)
    form = {"csrf_token": _csrf(page), "email": "new@example.com", "topics": "diffusion models"}
    assert client.post("/subscribe", data=form).status_code == 200
    (confirmation,) = set(outbox.glob("*.eml")) - before
    (confirm,) = set(_links(_text_of(confirmation), "confirm"))
    page = client.get(confirm).get_data(as_text=True)
    assert client.post(confirm, data={"csrf_token": _csrf(page)}).status_code == 200

    digest_mail = next(p for p in before if "ada" in _text_of(p))
    text = _text_of(digest_mail)
    (preferences,) = set(_links(text, "preferences"))
    page = client.get(preferences).get_data(as_text=True)
    saved = {
        "csrf_token": _csrf(page),
        "topics": "diffusion models",
        "frequency": "daily",
        "weekly_day": "0",
        "send_hour": "7",
        "timezone": "UTC",
        "pause_days": "0",
    }
    assert client.post(preferences, data=saved).status_code == 200
    feedback = _links(text, "feedback")[0].replace("&amp;", "&")
    vote = {"csrf_token": _csrf(client.get(feedback).get_data(as_text=True)), "vote": "up"}
    assert client.post(feedback, data=vote).status_code == 200
    # A failure inside a page behind a signed link: logged with its traceback.
    SQLModel.metadata.tables["feedback"].drop(engine)
    assert client.post(feedback, data=vote).status_code == 500
    client.get(_links(text, "digest")[0])
    unsubscribe = _links(text, "unsubscribe")[0]
    client.get(unsubscribe)
    assert client.post(unsubscribe).status_code == 200  # RFC 8058 one-click
    assert client.get(unsubscribe[:-3] + "xyz").status_code == 400  # altered: refused


def _mailed_unsubscribe(settings, engine, outbox: Path, tmp_path: Path) -> None:
    mail = next(p for p in outbox.glob("*.eml") if "bob@" in _text_of(p))
    header = message_from_bytes(mail.read_bytes(), policy=policy.default)["List-Unsubscribe"]
    (token,) = TOKEN.findall(unquote(str(header).split("mailto:")[1].split(">")[0]))
    request = EmailMessage()
    request["From"], request["To"] = "bob@example.com", "unsubscribe@digest.test"
    request["Subject"] = f"unsubscribe {token}"
    request.set_content("please")
    box = mailbox.mbox(tmp_path / "requests.mbox")
    box.add(request)
    box.add(request)  # read twice: seen before
    box.close()
    with Session(engine) as session:
        inbound.process_unsubscribe_requests(
            session=session,
            secret_key=settings.secret_key,
            messages=inbound.read_mailbox(tmp_path / "requests.mbox"),
            now=NOW,
        )


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_token_or_signed_link_in_the_logs_of_a_send_and_the_web_pages(
    tmp_path, captured, log_format
):
    settings = make_settings(tmp_path, log_format=log_format)
    buffer = captured(settings)
    engine = make_engine(settings.database_url)
    create_schema(engine)
    with Session(engine) as session:
        ingest_source(session=session, settings=settings, source="seeds", now=NOW)
        store_papers(session, diffusion_papers())
        make_subscriber(session, email="ada@example.com")
        make_subscriber(session, email="bob@example.com")
        summary = delivery.send_due_digests(
            session=session,
            mailer=FileMailer(settings.outbox_dir),
            settings=settings,
            now=NOW,
            digest_date=NOW.date(),
        )
    assert len(summary.sent) == 2
    _web_flow(settings, engine, settings.outbox_dir)
    _mailed_unsubscribe(settings, engine, settings.outbox_dir, tmp_path)
    texts = [_text_of(path) for path in settings.outbox_dir.glob("*.eml")]
    careless = next(link for text in texts for link in _links(text, "unsubscribe"))
    logging.getLogger("digest.careless").error("someone logged https://digest.test%s", careless)
    engine.dispose()

    tokens = set().union(*(_tokens_in(p) for p in settings.outbox_dir.glob("*.eml")))
    assert len(tokens) >= 8  # confirm, unsubscribe (link and mailto), preferences, feedback, view
    logs = buffer.getvalue()
    leaked = sorted(t for t in tokens if t in logs or t.lstrip(".") in logs)
    assert leaked == [], f"tokens in the logs:\n{logs}"
    assert TOKEN.search(logs) is None
    signed_path = r"/(confirm|unsubscribe|preferences|feedback|digest)/\.?[\w-]{8,}\.[\w-]+\."
    assert not re.search(signed_path, logs)
    for name in [
        "ingest.started",
        "ingest.finished",
        "subscriber.added",
        "subscription.requested",
        "subscription.confirmed",
        "subscriber.preferences_saved",
        "feedback.recorded",
        "subscriber.unsubscribed",
        "link.refused",
        "unsubscribe_mail.read",
        "unsubscribe_mail.finished",
        "Exception on /feedback/<token>",
    ]:
        assert name in logs, name
    assert "someone logged https://digest.test/unsubscribe/<token>" in logs
    if log_format == "json":
        records = [json.loads(line) for line in logs.splitlines()]
        assert {"ingest.finished", "unsubscribe_mail.finished"} <= {r.get("event") for r in records}
        finished = next(r for r in records if r.get("event") == "unsubscribe_mail.finished")
        assert finished["processed"] == 2 and finished["unsubscribed"] == 1
        assert finished["seen_before"] == 1


def test_an_empty_dsn_or_metrics_token_is_no_dsn_or_token(monkeypatch):
    monkeypatch.setenv("DIGEST_SENTRY_DSN", "")
    monkeypatch.setenv("DIGEST_METRICS_TOKEN", " ")
    settings = Settings()
    assert settings.sentry_dsn is None and settings.metrics_token is None


def test_no_token_in_the_logs_of_a_send_through_smtp_with_refusals_and_bounce_addresses(
    tmp_path, captured, smtp_server
):
    from digest.mailer import SMTPConfig, SMTPMailer

    settings = make_settings(
        tmp_path, mailer="smtp", smtp_url=smtp_server.url, bounce_domain="bounces.digest.test"
    )
    smtp_server.refuse_rcpt = lambda rcpt: (
        "550 5.1.1 no such user" if rcpt.startswith("gone") else None
    )
    buffer = captured(settings)
    engine = make_engine(settings.database_url)
    create_schema(engine)
    with Session(engine) as session:
        store_papers(session, diffusion_papers())
        for name in ("ada", "gone"):
            make_subscriber(session, email=f"{name}@example.com")
        delivery.send_due_digests(
            session=session,
            mailer=SMTPMailer(SMTPConfig(host=smtp_server.host, port=smtp_server.port)),
            settings=settings,
            now=NOW,
            digest_date=NOW.date(),
        )
    engine.dispose()
    (received,) = smtp_server.messages
    assert "+" in received.mail_from and received.mail_from.endswith("@bounces.digest.test")
    signature = received.mail_from.split("@")[0].rsplit("-", 1)[1]
    tokens = set(TOKEN.findall(received.message.as_string()))
    logs = buffer.getvalue()
    assert tokens and not [t for t in tokens if t in logs]
    assert signature not in logs.lower()
    # An SMTP failure names its code and address (digest.mailer's line, not the server's).
    refused = [line for line in logs.splitlines() if " digest." in line and "refused" in line]
    assert any("gone@example.com" in line and "550" in line for line in refused), logs
