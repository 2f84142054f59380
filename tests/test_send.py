"""Sending digests: idempotence, who gets nothing and why, dead SMTP servers."""

import datetime as dt
from email import message_from_bytes, policy

from sqlmodel import Session, select

from digest import delivery, digests, subscribers
from digest.envelope import new_message_id, new_message_ids
from digest.mailer import FileMailer, SMTPConfig, SMTPMailer
from digest.models import Delivery, DeliveryItem, DeliveryState, Paper, SubscriberStatus
from tests.conftest import free_port
from tests.factories import NOW, make_delivery, make_subscriber

DAY = NOW.date()


def outbox_messages(settings):
    return [
        message_from_bytes(p.read_bytes(), policy=policy.default)
        for p in sorted(settings.outbox_dir.glob("*.eml"))
    ]


def test_sending_twice_for_the_same_date_sends_nothing_the_second_time(seeded_store, db_settings):
    mailer = FileMailer(db_settings.outbox_dir)
    session = seeded_store
    make_subscriber(session, email="a@example.com")
    first = delivery.send_due_digests(
        session=session, mailer=mailer, settings=db_settings, now=NOW, digest_date=DAY
    )
    second = delivery.send_due_digests(
        session=session, mailer=mailer, settings=db_settings, now=NOW, digest_date=DAY
    )
    assert first.sent == [("a@example.com", 10)]
    assert second.sent == []
    assert second.skipped == [("a@example.com", f"already sent for {DAY.isoformat()}")]
    assert len(outbox_messages(db_settings)) == 1


def test_the_next_day_never_repeats_a_paper(seeded_store, db_settings):
    mailer = FileMailer(db_settings.outbox_dir)
    session = seeded_store
    make_subscriber(session, email="a@example.com")
    delivery.send_due_digests(
        session=session, mailer=mailer, settings=db_settings, now=NOW, digest_date=DAY
    )
    tomorrow = NOW + dt.timedelta(days=1)
    second = delivery.send_due_digests(
        session=session,
        mailer=mailer,
        settings=db_settings,
        now=tomorrow,
        digest_date=tomorrow.date(),
    )
    assert second.sent == [("a@example.com", 2)]  # 12 diffusion papers, 10 already sent
    items = list(session.exec(select(DeliveryItem)))
    assert len(items) == 12 and len({i.paper_id for i in items}) == 12


def test_unsubscribed_and_unconfirmed_addresses_get_nothing(seeded_store, db_settings):
    mailer = FileMailer(db_settings.outbox_dir)
    session = seeded_store
    gone = make_subscriber(session, email="gone@example.com")
    make_subscriber(session, email="new@example.com", status=SubscriberStatus.PENDING)
    make_subscriber(session, email="stay@example.com")
    subscribers.unsubscribe(session=session, subscriber_id=gone.id, now=NOW)
    summary = delivery.send_due_digests(
        session=session, mailer=mailer, settings=db_settings, now=NOW, digest_date=DAY
    )
    assert [e for e, _ in summary.sent] == ["stay@example.com"]
    assert dict(summary.skipped) == {
        "gone@example.com": "unsubscribed",
        "new@example.com": "not confirmed yet",
    }
    assert [str(m["To"]) for m in outbox_messages(db_settings)] == ["stay@example.com"]


def test_no_relevant_paper_means_no_email_and_a_reason(seeded_store, db_settings):
    mailer = FileMailer(db_settings.outbox_dir)
    session = seeded_store
    make_subscriber(session, email="a@example.com", topics=["protein folding"])
    summary = delivery.send_due_digests(
        session=session, mailer=mailer, settings=db_settings, now=NOW, digest_date=DAY
    )
    (row,) = session.exec(select(Delivery)).all()
    assert summary.sent == []
    assert summary.skipped == [("a@example.com", "no new paper above the relevance threshold")]
    assert row.state == DeliveryState.SKIPPED
    assert outbox_messages(db_settings) == []


def test_an_empty_store_is_a_normal_day_with_a_reason(engine, db_settings):
    mailer = FileMailer(db_settings.outbox_dir)
    with Session(engine) as session:
        make_subscriber(session, email="a@example.com", topics=["protein folding"])
        summary = delivery.send_due_digests(
            session=session, mailer=mailer, settings=db_settings, now=NOW, digest_date=DAY
        )
        (row,) = session.exec(select(Delivery)).all()
    assert summary.sent == [] and summary.failed == []
    assert summary.skipped == [("a@example.com", "no candidate papers from the last 7 days")]
    assert row.state == DeliveryState.SKIPPED
    assert outbox_messages(db_settings) == []


def test_dry_run_sends_and_records_nothing(seeded_store, db_settings):
    mailer = FileMailer(db_settings.outbox_dir)
    session = seeded_store
    make_subscriber(session, email="a@example.com")
    summary = delivery.send_due_digests(
        session=session,
        mailer=mailer,
        settings=db_settings,
        now=NOW,
        digest_date=DAY,
        dry_run=True,
    )
    assert summary.sent == [("a@example.com", 10)]
    assert list(session.exec(select(Delivery))) == []
    assert outbox_messages(db_settings) == []


def test_dead_smtp_server_fails_clearly_keeps_state_and_a_later_run_delivers(
    seeded_store, db_settings, smtp_server
):
    dead = SMTPMailer(SMTPConfig(host="127.0.0.1", port=free_port(), timeout=2))
    session = seeded_store
    make_subscriber(session, email="a@example.com")
    summary = delivery.send_due_digests(
        session=session, mailer=dead, settings=db_settings, now=NOW, digest_date=DAY
    )
    assert summary.sent == []
    ((email, reason),) = summary.failed
    assert email == "a@example.com" and "cannot reach the SMTP server" in reason
    (row,) = session.exec(select(Delivery)).all()
    assert row.state == DeliveryState.FAILED and row.retry_at is not None
    # The papers of a failed digest do not count as sent.
    assert digests.sent_paper_ids(session=session, subscriber_ids=[row.subscriber_id]) == {
        row.subscriber_id: set()
    }

    live = SMTPMailer(SMTPConfig(host=smtp_server.host, port=smtp_server.port))
    retry = delivery.send_due_digests(
        session=session, mailer=live, settings=db_settings, now=NOW, digest_date=DAY
    )
    assert retry.sent == [("a@example.com", 10)]
    session.refresh(row)
    assert row.state == DeliveryState.SENT and row.attempts == 2
    assert len(smtp_server.to("a@example.com")) == 1


def test_speed_trick_one_call_base64_is_standard_base64_in_lines_of_76():
    import base64
    import random

    from digest.render import _base64_lines

    rng = random.Random(3)
    for size in (0, 1, 56, 57, 58, 113, 114, 4000):
        data = bytes(rng.getrandbits(8) for _ in range(size))
        assert _base64_lines(data) == base64.encodebytes(data).replace(b"\n", b"\r\n")


def test_parts_go_out_as_written_when_7bit_allows_and_in_base64_otherwise():
    import html as htmllib

    from digest.render import _message

    envelope = _envelope("<m1@x.test>")

    def parts(text, html):
        message = _message(envelope, "Subject", text, html).message()
        return [
            (
                p.get_content_type(),
                p["Content-Transfer-Encoding"],
                p.get_content().replace("\r\n", "\n"),
            )
            for p in message.iter_parts()
        ]

    html = "<p>Légged robots 👍 — “quoted”</p>\n<p>two</p>"
    (text_part, html_part) = parts("plain ascii\nsecond line", html)
    assert text_part == ("text/plain", "7bit", "plain ascii\nsecond line")
    kind, encoding, content = html_part
    assert (kind, encoding) == ("text/html", "7bit")
    assert "&#128077;" in content and htmllib.unescape(content) == html

    # Non-ASCII text, a line over 998 characters, or the boundary itself: base64.
    boundary = "=_digest_" + __import__("hashlib").sha1(b"<m1@x.test>").hexdigest()[:24]
    for text in ("Légged robots", "x" * 1200, f"a\n--{boundary}\nb"):
        (text_part, _) = parts(text, "<p>h</p>")
        assert text_part == ("text/plain", "base64", text)


def test_papers_count_as_sent_for_thirty_days_in_sent_or_sending_digests(seeded_store):
    session = seeded_store
    paper_ids = sorted(p.id for p in session.exec(select(Paper)))
    sub = make_subscriber(session, email="a@example.com")
    other = make_subscriber(session, email="b@example.com")
    cases = [  # (days ago, state, paper)
        (digests.SEEN_DAYS + 1, DeliveryState.SENT, paper_ids[0]),  # too old to matter
        (digests.SEEN_DAYS, DeliveryState.SENT, paper_ids[1]),
        (1, DeliveryState.FAILED, paper_ids[2]),  # never reached the reader
        (0, DeliveryState.SENDING, paper_ids[3]),  # on its way
    ]
    for days, state, paper_id in cases:
        make_delivery(
            session,
            sub,
            digest_date=DAY - dt.timedelta(days=days),
            state=state,
            paper_ids=[paper_id],
        )
    seen = digests.sent_paper_ids(session=session, subscriber_ids=[sub.id, other.id], today=DAY)
    assert seen == {sub.id: {paper_ids[1], paper_ids[3]}, other.id: set()}
    everything = digests.sent_paper_ids(session=session, subscriber_ids=[sub.id])
    assert everything == {sub.id: {paper_ids[0], paper_ids[1], paper_ids[3]}}


def test_speed_trick_entry_parts_are_remembered_per_paper_object_never_across_papers(db_settings):
    import gc

    from digest.models import Paper, Subscriber
    from digest.ranking import Pick

    def entry(paper):
        pick = Pick(paper_id=paper.id, score=1.0, why="w", relevance=1.0, matched="m")
        context = digests.digest_context(
            settings=db_settings,
            subscriber=Subscriber(id=1, email="r@x.test"),
            digest_date=NOW.date(),
            picks=[pick],
            papers={paper.id: paper},
        )
        return context.entries[0]

    for n in range(200):
        # Each paper is dropped before the next is made, so ids of objects get reused: a
        # remembered entry must never be taken for the next paper's.
        paper = Paper(id=f"2606.{n:05d}", title=f"Title {n}", abstract=f"About {n}.", authors=[])
        first = entry(paper)
        assert (first.paper_id, first.title, first.summary) == (
            paper.id,
            f"Title {n}",
            f"About {n}.",
        )
        # The same parts again (the links' tokens carry the second they were made in).
        assert entry(paper)[:5] == first[:5]
        assert first.like_url.endswith(f"/up?paper=2606.{n:05d}")
        del paper, first
        gc.collect()


def test_speed_trick_rendered_messages_say_they_are_canonical_and_are():
    from digest.render import _message

    mail = _message(
        _envelope("<m2@x.test>"), "Subject", "one\nbare\r\nmixed\n", "<p>a</p>\n<p>b</p>\r\n"
    )
    assert mail.canonical
    assert mail.data.count(b"\n") == mail.data.count(b"\r\n") and mail.data.endswith(b"\r\n")


def _envelope(message_id):
    from digest.render import Envelope

    return Envelope(
        sender_name="Digest",
        sender_address="d@x.test",
        recipient="r@x.test",
        message_id=message_id,
        now=NOW,
    )


def test_message_ids_are_unique_and_well_formed():
    import re

    ids = new_message_ids("digest.example", 5000) + [new_message_id("digest.example")]
    assert len(set(ids)) == len(ids) == 5001
    assert all(re.fullmatch(r"<[0-9a-f]{32}\.digest@digest\.example>", m) for m in ids)


def test_a_send_stopped_part_way_is_recorded_as_interrupted_and_keeps_what_was_sent(
    seeded_store, db_settings
):
    """Ctrl-C during `digest send`: the run does not stay "running" for ever; it says it was
    interrupted, with what was sent until then, and a later run sends the rest, once."""
    from contextlib import contextmanager

    from digest.mailer import FileConnection
    from digest.models import Run

    class StopsAtSecond(FileMailer):
        sent = 0

        @contextmanager
        def connect(self):
            conn = FileConnection(self.directory)
            inner = conn.send

            def send(message):
                if StopsAtSecond.sent == 1:
                    raise KeyboardInterrupt
                inner(message)
                StopsAtSecond.sent += 1

            conn.send = send
            yield conn

    settings = db_settings.model_copy(update={"send_batch_size": 1})
    session = seeded_store
    for email in ("a@example.com", "b@example.com"):
        make_subscriber(session, email=email)
    try:
        delivery.send_due_digests(
            session=session,
            mailer=StopsAtSecond(settings.outbox_dir),
            settings=settings,
            now=NOW,
            digest_date=DAY,
        )
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError("the interrupt was swallowed")
    (run,) = session.exec(select(Run).where(Run.kind == "send")).all()
    assert run.status == "interrupted" and run.finished_at is not None
    assert run.summary["sent"] == 1 and "KeyboardInterrupt" in run.summary["error"]
    assert len(outbox_messages(settings)) == 1

    # The digest being sent when the run stopped is left to its lease (the message may
    # have reached the server): a run within it does not send it again ...
    again = delivery.send_due_digests(
        session=session,
        mailer=FileMailer(settings.outbox_dir),
        settings=settings,
        now=NOW,
        digest_date=DAY,
    )
    assert again.sent == []
    assert ("b@example.com", f"already sending for {DAY.isoformat()}") in again.skipped
    # ... and a run after it sends it, once.
    rest = delivery.send_due_digests(
        session=session,
        mailer=FileMailer(settings.outbox_dir),
        settings=settings,
        now=NOW + dt.timedelta(seconds=settings.lease_seconds + 1),
        digest_date=DAY,
    )
    assert rest.sent == [("b@example.com", 10)], rest
    assert len(outbox_messages(settings)) == 2
    recipients = sorted(str(m["To"]) for m in outbox_messages(settings))
    assert recipients == ["a@example.com", "b@example.com"]
