"""Bounces that come back by mail (issue 16, item 7): read from DSNs in the formats real servers
send (tests/fixtures/bounces/, written for these tests), tied to their delivery by the signed
token of the bounce address or else by the address, marked failed with the reason, hard ones
counted towards suppression like SMTP 5xx answers; a mailbox read twice changes nothing."""

import datetime as dt
import time
from pathlib import Path
from string import Template

import pytest
from sqlmodel import select

from digest import delivery
from digest.bounces import process as bounces
from digest.bounces import process_bounces, read_bounce
from digest.mailer import DeliveryError
from digest.models import (
    Bounce,
    Delivery,
    DeliveryState,
    InboundMessage,
    Subscriber,
    SubscriberStatus,
    SuppressionEvent,
)
from digest.suppression import lift_suppression
from digest.tokens import make_bounce_token
from tests.conftest import SECRET
from tests.factories import NOW, make_subscriber
from tests.test_bounce_address import CollectingMailer

FIXTURES = Path(__file__).parent / "fixtures" / "bounces"
VERP = f"bounces+{make_bounce_token(SECRET, 42)}@bounces.digest.test"


def bounce(name, *, verp=VERP, rcpt="ada@example.com", message_id="<x@y>", digest_date=None):
    """A fixture with the addresses of one digest filled in."""
    text = Template((FIXTURES / name).read_text()).substitute(
        verp=verp,
        rcpt=rcpt,
        message_id=message_id,
        digest_date=(digest_date or NOW.date()).isoformat(),
    )
    return text.encode()


# --- reading: which recipients failed, hard or soft, and why ----------------------------------

FORMATS = [
    # fixture, hard, status, words of the reason
    ("postfix-user-unknown.eml", True, "5.1.1", "User unknown in virtual mailbox table"),
    ("exchange-recipient-not-found.eml", True, "5.1.10", "RecipientNotFound"),
    ("exim-dsn.eml", True, "5.2.1", "account that you tried to reach is disabled"),
    ("exim-plain-text.eml", True, "5.1.1", "550-5.1.1 The email account"),
    ("qmail.eml", True, "5.1.1", "Remote host said: 550 5.1.1"),
    ("postfix-mailbox-full-expired.eml", False, "4.2.2", "Mailbox full"),
]


@pytest.mark.parametrize(("name", "hard", "status", "words"), FORMATS)
def test_each_servers_format_gives_the_failed_recipient_its_status_and_reason(
    name, hard, status, words
):
    findings = read_bounce(bounce(name, rcpt="Ada.Lovelace@Example.com"), local_part="bounces")
    (failure,) = findings.failures
    assert failure.address == "ada.lovelace@example.com"
    assert (failure.hard, failure.status) == (hard, status)
    assert words in failure.reason and "\n" not in failure.reason
    assert findings.tokens == [make_bounce_token(SECRET, 42)]
    assert findings.digest_date == NOW.date()


def test_a_plain_text_notice_is_read_only_up_to_the_returned_copy():
    # The notice gives no answer; the returned digest's subject must not be taken for one.
    raw = (
        b"From: Mail Delivery System <Mailer-Daemon@smtp.example.org>\n"
        b"To: digest@digest.test\n"
        b"X-Failed-Recipients: ada@example.com\n"
        b"Subject: Mail delivery failed: returning message to sender\n\n"
        b"This message was created automatically by mail delivery software.\n\n"
        b"A message that you sent could not be delivered to one or more of its\n"
        b"recipients. This is a permanent error. The following address(es) failed:\n\n"
        b"  ada@example.com\n"
        b"    mailbox is unavailable\n\n"
        b"------ This is a copy of the message, including all the headers. ------\n\n"
        b"To: ada@example.com\n"
        b"Subject: Today: 450 new papers\n\n"
    )
    (failure,) = read_bounce(raw, local_part="bounces").failures
    assert failure.reason == "reported as failed, no reason given"
    assert failure.hard and failure.status is None


def test_a_delay_warning_and_an_auto_reply_are_not_failures():
    delayed = read_bounce(bounce("postfix-delayed.eml"), local_part="bounces")
    assert delayed.failures == [] and delayed.delayed == ["ada@example.com"]
    vacation = read_bounce(bounce("vacation-auto-reply.eml"), local_part="bounces")
    assert vacation.failures == [] and vacation.delayed == []


def test_a_token_quoted_in_the_servers_answer_is_not_kept_in_the_reason():
    raw = bounce("postfix-user-unknown.eml").replace(
        b"Recipient address rejected: User\n", f"sender {VERP} rejected:\n".encode(), 1
    )
    (failure,) = read_bounce(raw, local_part="bounces").failures
    assert "sender bounces+TOKEN@bounces.digest.test rejected" in failure.reason
    assert make_bounce_token(SECRET, 42) not in failure.reason


def test_a_token_is_found_in_any_case_and_a_bounce_to_the_from_address_has_none():
    upper = read_bounce(bounce("qmail.eml", verp=VERP.upper()), local_part="bounces")
    assert upper.tokens == [make_bounce_token(SECRET, 42)]
    plain = read_bounce(bounce("qmail.eml", verp="digest@digest.test"), local_part="bounces")
    assert plain.tokens == [] and len(plain.failures) == 1


# --- recording: tied, marked failed, counted, remembered ----------------------------------------


def send_day(session, settings, day):
    """Send `day`'s digests through the real send path; the mails, by recipient."""
    mailer = CollectingMailer()
    now = dt.datetime.combine(day, NOW.timetz())
    delivery.send_due_digests(
        session=session, mailer=mailer, settings=settings, now=now, digest_date=day
    )
    return {mail.recipient: mail for mail in mailer.sent}


def bounce_of(mail, name, *, rcpt=None, verp=None):
    """The bounce a server would send back for `mail`."""
    return bounce(
        name,
        verp=verp or mail.sender,
        rcpt=rcpt or mail.recipient,
        message_id=mail["Message-ID"],
        digest_date=dt.date.fromisoformat(mail["X-Digest-Date"]),
    )


def process(session, settings, *raws, now=NOW):
    return process_bounces(
        session=session,
        settings=settings,
        messages=iter((str(n), raw) for n, raw in enumerate(raws)),
        now=now,
    )


def row_of(session, address, day=None):
    day = day or NOW.date()
    subscriber = session.exec(select(Subscriber).where(Subscriber.email == address)).one()
    session.refresh(subscriber)
    found = session.exec(
        select(Delivery).where(Delivery.subscriber_id == subscriber.id, Delivery.digest_date == day)
    ).one()
    session.refresh(found)
    return subscriber, found


@pytest.fixture
def verp_settings(db_settings):
    # Two papers a digest: the seeded store's twelve last six days of digests.
    return db_settings.model_copy(update={"bounce_domain": "bounces.digest.test", "digest_size": 2})


@pytest.mark.parametrize(("name", "hard", "status", "words"), FORMATS)
def test_a_bounce_marks_its_delivery_failed_with_the_reason_once(
    seeded_store, verp_settings, name, hard, status, words
):
    session = seeded_store
    make_subscriber(session, email="ada@example.com")
    make_subscriber(session, email="bob@example.com")
    mails = send_day(session, verp_settings, NOW.date())
    raw = bounce_of(mails["ada@example.com"], name)

    run = process(session, verp_settings, raw)
    (outcome,) = run.outcomes
    assert outcome.result == (bounces.HARD if hard else bounces.SOFT)
    assert outcome.tied_by == "token"
    ada, row = row_of(session, "ada@example.com")
    assert outcome.delivery_id == row.id
    assert row.state == DeliveryState.FAILED and row.retry_at is None
    assert row.reason.startswith("bounced") and words in row.reason
    assert ada.bounce_count == (1 if hard else 0)
    (kept,) = session.exec(select(Bounce)).all()
    assert (kept.delivery_id, kept.hard, kept.status) == (row.id, hard, status)
    bob, bob_row = row_of(session, "bob@example.com")
    assert bob_row.state == DeliveryState.SENT and bob.bounce_count == 0

    # The same mailbox read again: remembered, nothing changes.
    again = process(session, verp_settings, raw)
    assert [o.result for o in again.outcomes] == [bounces.SEEN_BEFORE]
    assert row_of(session, "ada@example.com")[0].bounce_count == (1 if hard else 0)
    assert len(session.exec(select(InboundMessage)).all()) == 1


def test_another_report_of_the_same_bounce_changes_nothing(seeded_store, verp_settings):
    session = seeded_store
    make_subscriber(session, email="ada@example.com")
    mail = send_day(session, verp_settings, NOW.date())["ada@example.com"]
    run = process(
        session,
        verp_settings,
        bounce_of(mail, "postfix-user-unknown.eml"),
        bounce_of(mail, "exim-dsn.eml"),  # the same failure reported by another server
    )
    assert [o.result for o in run.outcomes] == [bounces.HARD, bounces.ALREADY]
    assert "recorded already" in run.outcomes[1].reason
    assert row_of(session, "ada@example.com")[0].bounce_count == 1


def test_the_token_ties_a_forwarded_address_and_the_address_ties_a_bounce_without_one(
    seeded_store, verp_settings
):
    session = seeded_store
    for name in ("ada", "bob", "carl"):
        make_subscriber(session, email=f"{name}@example.com")
    mails = send_day(session, verp_settings, NOW.date())
    run = process(
        session,
        verp_settings,
        # ada forwards to another mailbox, which refuses: the token names ada's delivery.
        bounce_of(mails["ada@example.com"], "qmail.eml", rcpt="ada@elsewhere.example"),
        # A relay that rewrote the envelope sender: back at the From address, no token.
        bounce_of(mails["bob@example.com"], "exim-plain-text.eml", verp="digest@digest.test"),
        # Nobody we know, and no token.
        bounce("qmail.eml", verp="digest@digest.test", rcpt="stranger@example.org"),
    )
    assert [(o.result, o.tied_by) for o in run.outcomes] == [
        (bounces.HARD, "token"),
        (bounces.HARD, "address"),
        (bounces.UNMATCHED, None),
    ]
    assert "no subscriber with this address" in run.outcomes[2].reason
    for address in ("ada@example.com", "bob@example.com"):
        assert row_of(session, address)[1].state == DeliveryState.FAILED
    assert row_of(session, "carl@example.com")[1].state == DeliveryState.SENT


def test_a_forged_token_is_refused_and_only_the_address_can_tie_the_bounce(
    seeded_store, verp_settings
):
    session = seeded_store
    make_subscriber(session, email="ada@example.com")
    mail = send_day(session, verp_settings, NOW.date())["ada@example.com"]
    (ada_row_id,) = [d.id for d in session.exec(select(Delivery))]
    forged = "bounces+" + make_bounce_token("a-guessed-secret-key-0123456789", ada_row_id)
    run = process(
        session,
        verp_settings,
        bounce(
            "postfix-user-unknown.eml",
            verp=forged + "@bounces.digest.test",
            rcpt="stranger@example.org",
        ),
        bounce_of(mail, "postfix-user-unknown.eml", verp=forged + "@bounces.digest.test"),
    )
    assert [(o.result, o.tied_by) for o in run.outcomes] == [
        (bounces.UNMATCHED, None),
        (bounces.HARD, "address"),
    ]
    assert "bounce token not valid" in run.outcomes[0].reason


def test_the_address_ties_only_a_recent_digest_and_prefers_the_returned_date(
    seeded_store, verp_settings
):
    session = seeded_store
    make_subscriber(session, email="ada@example.com")
    first = send_day(session, verp_settings, NOW.date())["ada@example.com"]
    send_day(session, verp_settings, NOW.date() + dt.timedelta(days=1))
    # The first day's digest bounces after the second went out: its X-Digest-Date ties it.
    run = process(
        session, verp_settings, bounce_of(first, "exim-plain-text.eml", verp="digest@digest.test")
    )
    assert run.outcomes[0].result == bounces.HARD
    assert row_of(session, "ada@example.com")[1].state == DeliveryState.FAILED
    second = row_of(session, "ada@example.com", NOW.date() + dt.timedelta(days=1))[1]
    assert second.state == DeliveryState.SENT
    # A month later, with no date in the report, nothing recent is left to tie it to.
    late = process(
        session,
        verp_settings,
        bounce("qmail.eml", verp="digest@digest.test", rcpt="ada@example.com").replace(
            b"X-Digest-Date", b"X-Other"
        ),
        now=NOW + dt.timedelta(days=30),
    )
    assert late.outcomes[0].result == bounces.UNMATCHED
    assert "in the last 14 days" in late.outcomes[0].reason


def test_delays_auto_replies_and_deliveries_failed_at_smtp_time_change_nothing(
    seeded_store, verp_settings
):
    session = seeded_store
    make_subscriber(session, email="ada@example.com")
    mail = send_day(session, verp_settings, NOW.date())["ada@example.com"]
    run = process(
        session,
        verp_settings,
        bounce_of(mail, "postfix-delayed.eml"),
        bounce_of(mail, "vacation-auto-reply.eml"),
    )
    assert [o.result for o in run.outcomes] == [bounces.DELAYED, bounces.NOT_A_BOUNCE]
    ada, row = row_of(session, "ada@example.com")
    assert row.state == DeliveryState.SENT and ada.bounce_count == 0
    # Failed at SMTP time already (and counted then): a later bounce counts nothing more.
    row.state, row.reason, ada.bounce_count = DeliveryState.FAILED.value, "SMTP 550 no", 1
    session.add_all([row, ada])
    session.commit()
    late = process(session, verp_settings, bounce_of(mail, "qmail.eml"))
    assert late.outcomes[0].result == bounces.ALREADY
    assert "had failed already: SMTP 550 no" in late.outcomes[0].reason
    assert row_of(session, "ada@example.com")[0].bounce_count == 1


def test_hard_bounces_behind_a_relay_suppress_the_address_and_unsuppress_lifts_it(
    seeded_store, verp_settings
):
    """A relay accepts every digest (which starts the SMTP failure count again from zero);
    three days of hard bounces by mail still suppress the address, as three 5xx would."""
    session = seeded_store
    make_subscriber(session, email="ada@example.com")
    make_subscriber(session, email="bob@example.com")
    days = [NOW.date() + dt.timedelta(days=n) for n in range(4)]
    for day in days[:3]:
        mail = send_day(session, verp_settings, day)["ada@example.com"]
        run = process(session, verp_settings, bounce_of(mail, "postfix-user-unknown.eml"))
        assert run.outcomes[0].result == bounces.HARD
    ada, third = row_of(session, "ada@example.com", days[2])
    assert ada.status == SubscriberStatus.SUPPRESSED and ada.bounce_count == 3
    assert "address suppressed after 3 permanent failures" in third.reason
    assert set(send_day(session, verp_settings, days[3])) == {"bob@example.com"}

    lifted = lift_suppression(session=session, email="ADA@example.com", now=NOW)
    assert (lifted.failures, lifted.bounces) == (3, 3)
    assert "User unknown" in lifted.last_bounce
    ada = row_of(session, "ada@example.com", days[2])[0]
    assert ada.status == SubscriberStatus.ACTIVE and ada.bounce_count == 0
    # The history stays: every bounce, and the suppression and its lifting.
    assert len(session.exec(select(Bounce)).all()) == 3
    events = session.exec(select(SuppressionEvent).order_by(SuppressionEvent.id)).all()
    assert [(e.action, e.failures) for e in events] == [("suppressed", 3), ("lifted", 3)]
    assert "ada@example.com" in send_day(session, verp_settings, days[3] + dt.timedelta(1))


def test_a_soft_bounce_or_a_delivered_digest_ends_a_run_of_hard_bounces(
    seeded_store, verp_settings
):
    session = seeded_store
    make_subscriber(session, email="ada@example.com")
    days = [NOW.date() + dt.timedelta(days=n) for n in range(5)]
    mails = [send_day(session, verp_settings, day)["ada@example.com"] for day in days]
    fixtures = [
        "postfix-user-unknown.eml",
        "postfix-mailbox-full-expired.eml",  # soft: the mailbox exists
        "postfix-user-unknown.eml",
        None,  # delivered: no bounce
        "postfix-user-unknown.eml",
    ]
    raws = [bounce_of(mail, name) for mail, name in zip(mails, fixtures, strict=True) if name]
    run = process(session, verp_settings, *raws)
    assert [o.result for o in run.outcomes] == [
        bounces.HARD,
        bounces.SOFT,
        bounces.HARD,
        bounces.HARD,
    ]
    ada = row_of(session, "ada@example.com")[0]
    # Four bounces, three hard, never three in a row: still active.
    assert ada.status == SubscriberStatus.ACTIVE and ada.bounce_count == 1


class RefusingMailer(CollectingMailer):
    """A server that answers 550 to every recipient."""

    def send(self, message):
        raise DeliveryError("SMTP 550 5.1.1 no such user", permanent=True, code=550)


def test_smtp_5xx_answers_and_hard_bounces_count_in_one_run(seeded_store, verp_settings):
    session = seeded_store
    make_subscriber(session, email="ada@example.com")
    days = [NOW.date() + dt.timedelta(days=n) for n in range(3)]
    for day in days[:2]:
        delivery.send_due_digests(
            session=session,
            mailer=RefusingMailer(),
            settings=verp_settings,
            now=dt.datetime.combine(day, NOW.timetz()),
            digest_date=day,
        )
    assert row_of(session, "ada@example.com")[0].bounce_count == 2
    mail = send_day(session, verp_settings, days[2])["ada@example.com"]  # accepted: count 0
    assert row_of(session, "ada@example.com")[0].bounce_count == 0
    process(session, verp_settings, bounce_of(mail, "exim-dsn.eml"))
    ada = row_of(session, "ada@example.com")[0]
    assert ada.status == SubscriberStatus.SUPPRESSED and ada.bounce_count == 3


def hostile_messages():
    """What anyone could drop into the bounce mailbox."""
    deep = b"From: x@evil.test\nContent-Type: multipart/mixed; boundary=b0\n\n"
    for depth in range(1, 3000):
        deep += b"--b%d\nContent-Type: multipart/mixed; boundary=b%d\n\n" % (depth - 1, depth)
    many = b"From: x@evil.test\nContent-Type: multipart/report; boundary=b\n\n" + b"".join(
        b"--b\nContent-Type: message/delivery-status\n\n"
        b"Final-Recipient: rfc822; nobody%d@evil.test\nAction: failed\n\n" % n
        for n in range(5000)
    )
    # Lines on which some of flufl.bounce's patterns take quadratic time, megabytes of them.
    slow = b"From: x@evil.test\nSubject: hi\n\n" + (b",a" * 499 + b"\n") * 2000
    slow_line = b"From: x@evil.test\n\nfailed addresses follow:\n" + b"a" * 3_000_000
    return [
        OSError("the maildir file vanished"),
        b"",
        b"\xff\xfe\x00 no headers at all",
        deep,
        many,
        slow,
        slow_line,
        b"From: =?x-unknown?q?abc?= <x@evil.test>\nSubject: =?utf-8?b?!!!?=\n"
        b"Content-Type: text/plain; charset=x-no-such-charset\n"
        b"Content-Transfer-Encoding: base64\n\n!!!not base64\xff\n",
    ]


def test_a_hostile_mailbox_is_reported_message_by_message_and_the_real_bounce_recorded(
    seeded_store, verp_settings
):
    session = seeded_store
    make_subscriber(session, email="ada@example.com")
    mail = send_day(session, verp_settings, NOW.date())["ada@example.com"]
    messages = [*hostile_messages(), bounce_of(mail, "postfix-user-unknown.eml")]
    started = time.monotonic()
    run = process(session, verp_settings, *messages)
    elapsed = time.monotonic() - started
    results = [o.result for o in run.outcomes]
    assert results[:4] == [bounces.SKIPPED] * 4, run.outcomes
    assert "could not be read: OSError" in run.outcomes[0].reason
    assert "no headers" in run.outcomes[1].reason
    assert "RecursionError" in run.outcomes[3].reason
    # At most MAX_FAILURES addresses are taken from one message, and strangers tie nothing.
    assert results.count(bounces.UNMATCHED) == 20
    assert results[-1] == bounces.HARD and run.messages == len(messages)
    assert row_of(session, "ada@example.com")[1].state == DeliveryState.FAILED
    assert elapsed < 20, f"{elapsed:.1f} s"
    again = process(session, verp_settings, *messages)
    assert again.outcomes[-1].result == bounces.SEEN_BEFORE
    assert row_of(session, "ada@example.com")[0].bounce_count == 1


@pytest.mark.parametrize(
    ("state", "retry_at", "result"),
    [
        # Dropped after the whole message went out: the bounce shows it did go out.
        (DeliveryState.UNCONFIRMED, None, bounces.HARD),
        # An unconfirmed delivery an operator released for another attempt: not sent again.
        (DeliveryState.FAILED, NOW, bounces.HARD),
        # Being sent again right now, under a claim: left to its sender.
        (DeliveryState.SENDING, None, bounces.UNMATCHED),
    ],
)
def test_a_bounce_settles_a_delivery_whose_fate_was_unknown(
    seeded_store, verp_settings, state, retry_at, result
):
    session = seeded_store
    make_subscriber(session, email="ada@example.com")
    mail = send_day(session, verp_settings, NOW.date())["ada@example.com"]
    row = row_of(session, "ada@example.com")[1]
    row.state, row.retry_at = state.value, retry_at
    session.add(row)
    session.commit()
    run = process(session, verp_settings, bounce_of(mail, "qmail.eml"))
    assert run.outcomes[0].result == result
    row = row_of(session, "ada@example.com")[1]
    if result == bounces.HARD:
        assert row.state == DeliveryState.FAILED and row.retry_at is None
        assert row.reason.startswith("bounced: Remote host said: 550 5.1.1")
    else:
        assert row.state == state and "the delivery is sending" in run.outcomes[0].reason
