"""The beat schedule: ingest before the morning, then plan the digests that are due."""

from __future__ import annotations

from typing import Any

from celery.schedules import crontab

from digest.config import Settings


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    # One entry per configured source, so one source being down does not hold up the others
    # and each gets its own run record.
    ingest = {
        f"ingest-{source}": {
            "task": "workers.tasks.ingest",
            "schedule": crontab(hour=str(settings.ingest_hour_utc), minute="0"),
            "kwargs": {"source": source},
        }
        for source in settings.ingest_sources
    }
    return {
        **ingest,
        # Each subscriber has their own send hour and time zone: look every few minutes for
        # those whose hour has come and who have no delivery for their local date yet.
        "send-due-digests": {
            "task": "workers.tasks.plan_due",
            "schedule": crontab(minute=f"*/{settings.plan_every_minutes}"),
        },
        # Deliveries left behind by a dead worker or a lost task are queued again.
        "sweep-stuck-deliveries": {
            "task": "workers.tasks.sweep",
            "schedule": crontab(minute=f"*/{settings.sweep_every_minutes}"),
        },
    }
