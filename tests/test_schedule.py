"""When a digest is due: time zones, send hours, weekly days, pauses (frozen clocks)."""

import datetime as dt

from freezegun import freeze_time

from digest.schedule import SendWindow, latest_due

PARIS = SendWindow(frequency="daily", weekly_day=0, send_hour=7, timezone="Europe/Paris")


# A planner runs every few minutes: two hours of catch-up is plenty for these cases.
CATCHUP = dt.timedelta(hours=2)


def due_date(window, now):
    return latest_due(window, now, CATCHUP)


def utc(*args):
    return dt.datetime(*args, tzinfo=dt.UTC)


def test_due_at_the_local_send_hour_not_before():
    # 05:59 UTC is 06:59 in Paris in winter; 06:00 UTC is 07:00.
    assert due_date(PARIS, utc(2026, 1, 15, 5, 59)) == (
        None,
        "send hour 07:00 Europe/Paris not reached",
    )
    assert due_date(PARIS, utc(2026, 1, 15, 6, 0)) == (dt.date(2026, 1, 15), None)


def test_local_date_differs_from_utc_date():
    tokyo = SendWindow(frequency="daily", weekly_day=0, send_hour=7, timezone="Asia/Tokyo")
    # 23:00 UTC on the 14th is 08:00 on the 15th in Tokyo.
    assert due_date(tokyo, utc(2026, 1, 14, 23, 0)) == (dt.date(2026, 1, 15), None)


def test_summer_time_moves_the_utc_send_moment():
    assert due_date(PARIS, utc(2026, 7, 15, 4, 59))[0] is None
    assert due_date(PARIS, utc(2026, 7, 15, 5, 0)) == (dt.date(2026, 7, 15), None)


def test_weekly_and_paused():
    weekly = SendWindow(frequency="weekly", weekly_day=2, send_hour=7, timezone="UTC")
    assert due_date(weekly, utc(2026, 1, 14, 8)) == (dt.date(2026, 1, 14), None)  # Wednesday
    assert due_date(weekly, utc(2026, 1, 15, 8)) == (None, "weekly digest, sent on Wednesdays")
    paused = SendWindow(
        frequency="daily",
        weekly_day=0,
        send_hour=7,
        timezone="UTC",
        paused_until=dt.date(2026, 1, 20),
    )
    assert due_date(paused, utc(2026, 1, 20, 8)) == (None, "paused until 2026-01-20")
    assert due_date(paused, utc(2026, 1, 21, 8)) == (dt.date(2026, 1, 21), None)


def test_beat_runs_ingest_before_the_morning_and_plans_every_few_minutes(settings):
    from workers.schedule import beat_schedule

    schedule = beat_schedule(settings)
    ingest = schedule["ingest-hf"]["schedule"]
    plan = schedule["send-due-digests"]["schedule"]
    assert schedule["ingest-hf"]["task"] == "workers.tasks.ingest"
    assert schedule["send-due-digests"]["task"] == "workers.tasks.plan_due"
    assert ingest.hour == {settings.ingest_hour_utc} and ingest.minute == {0}
    assert plan.minute == set(range(0, 60, settings.plan_every_minutes))
    with freeze_time("2026-01-15 04:59:00"):
        last = dt.datetime(2026, 1, 14, 5, 0, tzinfo=dt.UTC)
        assert not ingest.is_due(last).is_due
    with freeze_time("2026-01-15 05:00:30"):
        assert ingest.is_due(dt.datetime(2026, 1, 14, 5, 0, tzinfo=dt.UTC)).is_due
