"""The planner on each subscriber's clock: time zones, DST, late and doubled planners."""

import datetime as dt

from freezegun import freeze_time
from sqlmodel import Session, select

from digest import delivery, subscribers
from digest.models import Delivery, DeliveryState, Frequency, SubscriberStatus
from digest.schedule import SendWindow, latest_due, send_moment
from tests.factories import make_paper, make_subscriber, store_papers

CATCHUP = dt.timedelta(hours=12)


def utc(*args):
    return dt.datetime(*args, tzinfo=dt.UTC)


def now_utc():
    return dt.datetime.now(dt.UTC)


def add(session, email, **kw):
    """A subscriber who signed up before every moment these tests plan at."""
    return make_subscriber(session, email=email, now=utc(2026, 1, 1), **kw)


def planned(session):
    rows = session.exec(select(Delivery).order_by(Delivery.id)).all()
    emails = {s.id: s.email for s in subscribers.list_subscribers(session=session)}
    return [(emails[r.subscriber_id], r.digest_date.isoformat()) for r in rows]


def test_plans_those_whose_local_hour_has_come(engine, db_settings):
    with Session(engine) as session:
        add(session, "paris@example.com", timezone="Europe/Paris", send_hour=7)
        add(session, "ny@example.com", timezone="America/New_York", send_hour=7)
        add(session, "weekly@example.com", frequency=Frequency.WEEKLY, weekly_day=0)
        add(session, "pending@example.com", status=SubscriberStatus.PENDING)
        with freeze_time("2026-01-15 06:30:00"):  # a Thursday; 07:30 in Paris, 01:30 in NY
            plan = delivery.plan_deliveries(session=session, settings=db_settings, now=now_utc())
        assert planned(session) == [("paris@example.com", "2026-01-15")]
        assert len(plan.delivery_ids) == 1
        assert dict(plan.skipped) == {
            "ny@example.com": "send hour 07:00 America/New_York not reached",
            "weekly@example.com": "weekly digest, sent on Mondays",
            "pending@example.com": "not confirmed yet",
        }


def test_a_planner_run_twice_or_every_ten_minutes_plans_each_day_once(engine, db_settings):
    with Session(engine) as session:
        add(session, "a@example.com", send_hour=7)
        ids = []
        for moment in (
            "2026-01-15 07:00",
            "2026-01-15 07:00",
            "2026-01-15 07:10",
            "2026-01-15 18:50",
            "2026-01-16 06:50",
            "2026-01-16 07:00",
        ):
            with freeze_time(moment):
                ids += delivery.plan_deliveries(
                    session=session, settings=db_settings, now=now_utc()
                ).delivery_ids
        assert planned(session) == [
            ("a@example.com", "2026-01-15"),
            ("a@example.com", "2026-01-16"),
        ]
        assert len(ids) == 2


def test_a_late_planner_catches_up_the_missed_day_once(engine, db_settings):
    with Session(engine) as session:
        add(session, "late@example.com", send_hour=22)
        # The planner was down from 21:00 until 02:30 the next day.
        with freeze_time("2026-01-16 02:30"):
            first = delivery.plan_deliveries(session=session, settings=db_settings, now=now_utc())
        with freeze_time("2026-01-16 02:40"):
            second = delivery.plan_deliveries(session=session, settings=db_settings, now=now_utc())
        assert planned(session) == [("late@example.com", "2026-01-15")]
        assert (len(first.delivery_ids), len(second.delivery_ids)) == (1, 0)


def test_dst_spring_forward_and_fall_back_neither_skip_nor_double(engine, db_settings):
    with Session(engine) as session:
        # 02:00 does not exist in Paris on 2026-03-29 and happens twice on 2026-10-25.
        add(session, "paris@example.com", timezone="Europe/Paris", send_hour=2)
        days = set()
        for start in (utc(2026, 3, 27, 20), utc(2026, 10, 23, 20)):
            moment = start
            while moment < start + dt.timedelta(days=4):
                delivery.plan_deliveries(session=session, settings=db_settings, now=moment)
                moment += dt.timedelta(minutes=10)
        for _, day in planned(session):
            days.add(day)
        assert sorted(days) == [
            "2026-03-28",
            "2026-03-29",
            "2026-03-30",
            "2026-03-31",
            "2026-10-24",
            "2026-10-25",
            "2026-10-26",
            "2026-10-27",
        ]
        assert len(planned(session)) == 8


def test_send_moment_across_dst():
    # Spring forward: the missing 02:00 maps to 03:00 CEST (01:00 UTC).
    assert send_moment(dt.date(2026, 3, 29), 2, "Europe/Paris") == utc(2026, 3, 29, 1)
    # Fall back: 02:00 happens twice; the first one (CEST, 00:00 UTC) counts.
    assert send_moment(dt.date(2026, 10, 25), 2, "Europe/Paris") == utc(2026, 10, 25, 0)
    assert send_moment(dt.date(2026, 7, 1), 7, "Europe/Paris") == utc(2026, 7, 1, 5)


def test_latest_due_is_pure_and_honours_the_catchup_window():
    w = SendWindow(frequency="daily", weekly_day=0, send_hour=7, timezone="UTC")
    assert latest_due(w, utc(2026, 1, 15, 6, 59), CATCHUP) == (
        None,
        "send hour 07:00 UTC not reached",
    )
    assert latest_due(w, utc(2026, 1, 15, 18, 59), CATCHUP) == (dt.date(2026, 1, 15), None)
    assert latest_due(w, utc(2026, 1, 15, 19, 1), CATCHUP)[0] is None


def test_unsubscribing_after_planning_is_honoured_before_sending(engine, db_settings):
    from digest.mailer import FileMailer

    with Session(engine) as session:
        store_papers(
            session,
            [
                make_paper(
                    title="Diffusion models",
                    abstract="Diffusion models.",
                    published=utc(2026, 1, 15),
                )
            ],
            now=utc(2026, 1, 15, 6),
        )
        sub = add(session, "a@example.com", topics=["diffusion models"])
        plan = delivery.plan_deliveries(
            session=session, settings=db_settings, now=utc(2026, 1, 15, 7, 5)
        )
        subscribers.unsubscribe(session=session, subscriber_id=sub.id, now=utc(2026, 1, 15, 7, 6))
        summary = delivery.send_deliveries(
            session=session,
            mailer=FileMailer(db_settings.outbox_dir),
            settings=db_settings,
            delivery_ids=plan.delivery_ids,
            now=utc(2026, 1, 15, 7, 7),
        )
        assert summary.sent == [] and summary.skipped == [("a@example.com", "unsubscribed")]
        (row,) = session.exec(select(Delivery)).all()
        assert row.state == DeliveryState.SKIPPED
    assert not db_settings.outbox_dir.exists()


def test_planning_a_page_at_a_time_hands_over_each_page_as_it_is_committed(engine, db_settings):
    with Session(engine) as session:
        for i in range(5):
            add(session, f"p{i}@example.com", send_hour=7)
        handed: list[list[int]] = []
        with freeze_time("2026-01-15 07:30"):
            plan = delivery.plan_deliveries(
                session=session,
                settings=db_settings,
                now=now_utc(),
                on_planned=handed.append,
                page_size=2,
            )
        assert [len(ids) for ids in handed] == [2, 2, 1]
        assert sum(handed, []) == plan.delivery_ids and len(set(plan.delivery_ids)) == 5
        committed = session.exec(select(Delivery.id)).all()
        assert sorted(committed) == sorted(plan.delivery_ids)
