"""A digest skipped for want of papers is looked at again when papers come before its date's
catch-up window closes (issue 13, item 5); never for other skips, never twice for one change."""

import datetime as dt

from sqlmodel import select

from digest import delivery
from digest.digests import NOTHING_RELEVANT, is_empty_reason
from digest.mailer import FileMailer
from digest.models import Delivery, DeliveryState, Run
from tests.factories import NOW, make_paper, make_subscriber, store_papers

DAY = NOW.date()  # the subscriber's 07:00 UTC digest is due at NOW (08:00) for 12 hours


def protein_paper():
    return make_paper(
        title="Protein folding predicted from sequence alone",
        abstract="We predict protein folding and three-dimensional protein structure from the "
        "amino acid sequence, and study how proteins fold.",
    )


def send(session, settings, now):
    return delivery.send_due_digests(
        session=session, mailer=FileMailer(settings.outbox_dir), settings=settings, now=now
    )


def test_a_day_skipped_for_nothing_relevant_is_sent_when_a_relevant_paper_comes(
    seeded_store, db_settings
):
    session = seeded_store
    make_subscriber(session, email="a@example.com", topics=["protein folding"])
    first = send(session, db_settings, NOW)
    assert first.skipped == [("a@example.com", NOTHING_RELEVANT)]

    store_papers(session, [protein_paper()], now=NOW + dt.timedelta(hours=1))
    later = NOW + dt.timedelta(hours=2)
    second = send(session, db_settings, later)

    assert second.sent == [("a@example.com", 1)]
    assert second.digest_date == DAY
    (row,) = session.exec(select(Delivery)).all()
    assert (row.state, row.digest_date, row.reason) == (DeliveryState.SENT, DAY, None)
    assert len(list(db_settings.outbox_dir.glob("*.eml"))) == 1


def test_without_new_papers_the_skip_stands_and_says_so(seeded_store, db_settings):
    session = seeded_store
    make_subscriber(session, email="a@example.com", topics=["protein folding"])
    send(session, db_settings, NOW)
    again = send(session, db_settings, NOW + dt.timedelta(hours=2))
    assert again.sent == []
    assert again.skipped == [("a@example.com", f"already skipped for {DAY.isoformat()}")]


def test_a_change_of_the_store_is_looked_at_once(seeded_store, db_settings):
    """Papers came, but none relevant: the digest is ranked again once, skipped again, and
    left alone by the next planner pass until papers change again."""
    session = seeded_store
    make_subscriber(session, email="a@example.com", topics=["protein folding"])
    send(session, db_settings, NOW)
    store_papers(
        session,
        [make_paper(title="Diffusion models, one more trick", abstract="Diffusion models again.")],
        now=NOW + dt.timedelta(hours=1),
    )
    plan = delivery.plan_deliveries(
        session=session, settings=db_settings, now=NOW + dt.timedelta(hours=2)
    )
    assert len(plan.reopened) == 1 and plan.delivery_ids == plan.reopened
    delivery.record_plan(session=session, plan=plan, now=NOW + dt.timedelta(hours=2))
    run = session.exec(select(Run).where(Run.kind == "plan")).one()
    assert (run.summary["planned"], run.summary["looked_at_again"]) == (1, 1)
    resent = delivery.send_deliveries(
        session=session,
        mailer=FileMailer(db_settings.outbox_dir),
        settings=db_settings,
        delivery_ids=plan.delivery_ids,
        now=NOW + dt.timedelta(hours=2),
    )
    assert resent.skipped == [("a@example.com", NOTHING_RELEVANT)]
    quiet = delivery.plan_deliveries(
        session=session, settings=db_settings, now=NOW + dt.timedelta(hours=3)
    )
    assert quiet.delivery_ids == [] and quiet.reopened == []


def test_after_the_catch_up_window_the_skipped_day_is_left_alone(seeded_store, db_settings):
    session = seeded_store
    make_subscriber(session, email="a@example.com", topics=["protein folding"])
    send(session, db_settings, NOW)
    store_papers(session, [protein_paper()], now=NOW + dt.timedelta(hours=13))
    # 21:00: the 07:00 digest's 12-hour catch-up closed at 19:00; tomorrow's is not due yet.
    late = send(session, db_settings, NOW + dt.timedelta(hours=13))
    assert late.sent == []
    (row,) = session.exec(select(Delivery)).all()
    assert (row.state, row.reason) == (DeliveryState.SKIPPED, NOTHING_RELEVANT)


def test_a_skip_for_the_subscribers_sake_is_not_a_skip_for_want_of_papers():
    assert is_empty_reason(NOTHING_RELEVANT)
    assert is_empty_reason("no candidate papers from the last 7 days")
    for reason in (None, "unsubscribed", "paused until 2026-07-01", "not confirmed yet"):
        assert not is_empty_reason(reason)


def test_a_workers_cached_corpus_sees_papers_stored_since(seeded_store, db_settings):
    """A worker keeps the day's prepared corpus for minutes; a digest looked at again because
    papers came must not be ranked against the corpus from before them."""
    session = seeded_store
    cache = delivery.CorpusCache()
    before, _ = cache.get(session=session, settings=db_settings, digest_date=DAY, now=NOW)
    again, _ = cache.get(session=session, settings=db_settings, digest_date=DAY, now=NOW)
    assert again is before  # nothing changed: reused
    new = protein_paper()
    store_papers(session, [new], now=NOW + dt.timedelta(minutes=5))
    after, _ = cache.get(
        session=session, settings=db_settings, digest_date=DAY, now=NOW + dt.timedelta(minutes=6)
    )
    assert after is not before and new.id in after.index and new.id not in before.index
