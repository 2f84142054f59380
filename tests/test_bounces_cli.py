"""`digest bounces process PATH` on an mbox file or a maildir, run again on the same mailbox,
and `digest subscribers unsuppress ADDR`, as an operator runs them."""

import mailbox

import pytest
from sqlmodel import Session, select

from digest import delivery
from digest.db import create_schema, make_engine
from digest.models import Bounce, Delivery, Subscriber, SuppressionEvent
from tests.conftest import SECRET, make_settings
from tests.factories import NOW, diffusion_papers, make_subscriber, store_papers
from tests.test_bounce_address import CollectingMailer
from tests.test_bounces import bounce_of
from tests.test_cli import run

pytestmark = pytest.mark.integration


@pytest.fixture
def sent(tmp_path):
    """ada and bob got today's digest, with bounce addresses, on a file store."""
    settings = make_settings(tmp_path, bounce_domain="bounces.digest.test")
    engine = make_engine(settings.database_url)
    create_schema(engine)
    mailer = CollectingMailer()
    with Session(engine) as session:
        store_papers(session, diffusion_papers())
        for name in ("ada", "bob"):
            make_subscriber(session, email=f"{name}@example.com")
        delivery.send_due_digests(
            session=session, mailer=mailer, settings=settings, now=NOW, digest_date=NOW.date()
        )
    yield settings, engine, {mail.recipient: mail for mail in mailer.sent}
    engine.dispose()


def cli_env(settings):
    return {
        "DIGEST_ENV": "test",
        "DIGEST_SECRET_KEY": SECRET,
        "DIGEST_DATABASE_URL": settings.database_url,
        "DIGEST_BOUNCE_DOMAIN": settings.bounce_domain,
        # One hard bounce is enough, so that this test can lift a suppression.
        "DIGEST_SUPPRESS_AFTER_FAILURES": "1",
    }


@pytest.mark.parametrize("kind", ["mbox", "maildir"])
def test_bounces_are_recorded_once_and_a_suppression_is_lifted_with_its_history(
    tmp_path, sent, kind
):
    settings, engine, mails = sent
    path = tmp_path / ("bounces.mbox" if kind == "mbox" else "Maildir")
    box = mailbox.mbox(path) if kind == "mbox" else mailbox.Maildir(path)
    for raw in (
        bounce_of(mails["ada@example.com"], "exchange-recipient-not-found.eml"),
        bounce_of(mails["bob@example.com"], "postfix-delayed.eml"),
        b"\xff\xfe not a message",
    ):
        box.add(raw)
    box.close()
    env = cli_env(settings)

    out = run(["bounces", "process", str(path)], cwd=tmp_path, env_extra=env).stdout
    assert "processed 3: hard bounce 1, soft bounce 0, already recorded 0, not matched 0, " in out
    assert "delayed 1, not a bounce 0, skipped 1, seen before 0" in out
    assert "ada@example.com delivery 1 (by token)" in out
    assert "550 5.1.10 RESOLVER.ADR.RecipientNotFound" in out
    assert "address suppressed after 1 permanent failures" in out
    assert "malformed message: MalformedBounce: no headers" in out
    assert "bounces+" not in out  # the signed bounce address is never printed
    again = run(["bounces", "process", str(path)], cwd=tmp_path, env_extra=env).stdout
    assert "hard bounce 0" in again and "seen before 2" in again and "skipped 1" in again

    lifted = run(["subscribers", "unsuppress", "Ada@Example.com"], cwd=tmp_path, env_extra=env)
    assert lifted.stdout.startswith(
        "ada@example.com is active again (suppressed after 1 permanent failures; "
        "1 bounce(s) by mail kept in its history)"
    )
    assert "last bounce: 550 5.1.10" in lifted.stdout
    with Session(engine) as session:
        ada = session.exec(select(Subscriber).where(Subscriber.email == "ada@example.com")).one()
        assert (ada.status, ada.bounce_count) == ("active", 0)
        assert len(session.exec(select(Bounce)).all()) == 1
        assert [e.action for e in session.exec(select(SuppressionEvent))] == [
            "suppressed",
            "lifted",
        ]
        assert session.get(Delivery, 1).reason.startswith("bounced: 550 5.1.10")
    for address, words in (
        ("ada@example.com", "ada@example.com is not suppressed (it is active)."),
        ("bob@example.com", "bob@example.com is not suppressed (it is active)."),
        ("carl@example.com", "No subscriber with address carl@example.com."),
    ):
        refused = run(
            ["subscribers", "unsuppress", address], cwd=tmp_path, env_extra=env, check=False
        )
        assert refused.returncode == 1 and words in refused.stderr


def test_a_path_that_is_no_mailbox_is_one_line(tmp_path, sent):
    settings, _, _ = sent
    (tmp_path / "notes").mkdir()
    result = run(
        ["bounces", "process", str(tmp_path / "notes")],
        cwd=tmp_path,
        env_extra=cli_env(settings),
        check=False,
    )
    assert result.returncode == 1 and "is a directory but not a maildir" in result.stderr
    assert "Traceback" not in result.stderr
