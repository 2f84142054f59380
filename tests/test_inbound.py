"""`digest unsubscribes process PATH`: the List-Unsubscribe mailto: requests, from an mbox file or
a maildir, honoured only with a valid signed token; forged ones refused and change nothing."""

import datetime as dt
import mailbox
from email import message_from_bytes, policy
from email.message import EmailMessage
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from sqlmodel import Session, select

from digest import delivery, subscribers
from digest.db import create_schema, make_engine
from digest.inbound import candidate_tokens
from digest.mailer import FileMailer
from digest.models import Subscriber
from digest.tokens import Purpose, make_token
from tests.conftest import SECRET, make_settings
from tests.factories import NOW, link_token, make_paper, make_subscriber, store_papers
from tests.test_cli import run


def request_mail(sender, subject, body="", to="unsubscribe@digest.test"):
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body or "sent from my phone")
    return message


@pytest.fixture
def store(tmp_path):
    """Three active subscribers who each got a digest (written to the outbox), on a file store."""
    settings = make_settings(tmp_path)
    engine = make_engine(settings.database_url)
    create_schema(engine)
    with Session(engine) as session:
        store_papers(
            session, [make_paper(title="Diffusion models at scale", abstract="Diffusion models.")]
        )
        for name in ("ada", "bob", "carl"):
            make_subscriber(session, email=f"{name}@example.com")
        summary = delivery.send_due_digests(
            session=session,
            mailer=FileMailer(settings.outbox_dir),
            settings=settings,
            now=NOW,
            digest_date=NOW.date(),
        )
    assert len(summary.sent) == 3
    yield settings, engine
    engine.dispose()


def mailto_of(settings, address):
    """The mailto: of the List-Unsubscribe header of the digest `address` received."""
    for path in settings.outbox_dir.glob("*.eml"):
        message = message_from_bytes(path.read_bytes(), policy=policy.default)
        if message["To"] == address:
            header = str(message["List-Unsubscribe"])
            return next(p.strip(" <>") for p in header.split(",") if "mailto:" in p)
    raise AssertionError(f"no digest for {address}")


def statuses(engine):
    with Session(engine) as session:
        return {s.email: s.status for s in session.exec(select(Subscriber))}


def cli_env(settings):
    return {
        "DIGEST_ENV": "test",
        "DIGEST_SECRET_KEY": SECRET,
        "DIGEST_DATABASE_URL": settings.database_url,
    }


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["mbox", "maildir"])
def test_mailto_unsubscribes_are_honoured_and_forged_ones_refused(tmp_path, store, kind):
    settings, engine = store
    ada = urlsplit(mailto_of(settings, "ada@example.com"))
    # A mail client sends the mailto: as it is: to its address, with its subject.
    assert ada.path == "unsubscribe@digest.test"
    ada_subject = unquote(parse_qs(ada.query)["subject"][0])
    bob_token = unquote(
        parse_qs(urlsplit(mailto_of(settings, "bob@example.com")).query)["subject"][0]
    ).split()[-1]
    with Session(engine) as session:
        carl = subscribers.get_subscriber(session=session, email="carl@example.com")
    carl_good = link_token(SECRET, Purpose.UNSUBSCRIBE, carl)
    messages = [
        request_mail("Ada <ada@example.com>", ada_subject),
        request_mail("bob@example.com", "Please remove me", f"Token: {bob_token}\n"),
        request_mail(
            "x@evil.test",
            "unsubscribe " + link_token("another-secret-key-0123456789", Purpose.UNSUBSCRIBE, carl),
        ),
        request_mail("x@evil.test", "unsubscribe " + carl_good[:-5] + "AAAAA"),
        request_mail("x@evil.test", "unsubscribe " + link_token(SECRET, Purpose.PREFERENCES, carl)),
        request_mail("carl@example.com", "stop sending these"),
        request_mail(
            "x@evil.test", "unsubscribe " + make_token(SECRET, Purpose.UNSUBSCRIBE, {"s": 9999})
        ),
        request_mail("Ada <ada@example.com>", "Re: " + ada_subject),
    ]
    path = tmp_path / ("requests.mbox" if kind == "mbox" else "Maildir")
    box = mailbox.mbox(path) if kind == "mbox" else mailbox.Maildir(path)
    for message in messages:
        box.add(message)
    box.close()

    result = run(["unsubscribes", "process", str(path)], cwd=tmp_path, env_extra=cli_env(settings))
    out = result.stdout
    assert "processed 8, unsubscribed 2, already unsubscribed 1, refused 5" in out, out
    assert out.count("token not valid: forged, altered or made for another purpose") == 3
    assert "no unsubscribe token in the subject or body" in out
    assert "token names no known subscriber" in out
    assert statuses(engine) == {
        "ada@example.com": "unsubscribed",
        "bob@example.com": "unsubscribed",
        "carl@example.com": "active",
    }
    # Processing the same mailbox again changes nothing and says so.
    again = run(["unsubscribes", "process", str(path)], cwd=tmp_path, env_extra=cli_env(settings))
    assert (
        "processed 8, unsubscribed 0, already unsubscribed 0, refused 0, seen before 8"
        in again.stdout
    )

    # Honoured before the next send, always: the next digest goes to carl only.
    with Session(engine) as session:
        summary = delivery.send_due_digests(
            session=session,
            mailer=FileMailer(settings.outbox_dir),
            settings=settings,
            now=NOW,
            digest_date=NOW.date() + dt.timedelta(days=1),
        )
    assert ("ada@example.com", "unsubscribed") in summary.skipped
    assert ("bob@example.com", "unsubscribed") in summary.skipped


@pytest.mark.integration
def test_a_path_that_is_no_mailbox_gets_a_clear_error_and_changes_nothing(tmp_path, store):
    settings, engine = store
    (tmp_path / "notes").mkdir()
    before = statuses(engine)
    result = run(
        ["unsubscribes", "process", str(tmp_path / "notes")],
        cwd=tmp_path,
        env_extra=cli_env(settings),
        check=False,
    )
    assert result.returncode == 1 and "is a directory but not a maildir" in result.stderr
    missing = run(
        ["unsubscribes", "process", str(tmp_path / "nope.mbox")],
        cwd=tmp_path,
        env_extra=cli_env(settings),
        check=False,
    )
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert statuses(engine) == before


def test_candidate_tokens_come_from_the_subject_then_the_plain_body():
    token = make_token(SECRET, Purpose.UNSUBSCRIBE, {"s": 1})
    other = make_token(SECRET, Purpose.UNSUBSCRIBE, {"s": 2})
    message = request_mail("a@example.com", f"unsubscribe {token}", f"> {other}\n> {token}")
    assert candidate_tokens(message) == [token, other]
    assert candidate_tokens(request_mail("a@example.com", "hello", "no token. here.")) == []
