"""Run records (ingest, plan, send): the latest ones, for `digest status`."""

from __future__ import annotations

from sqlmodel import Session, col, select

from digest.models import Run


def last_runs(*, session: Session, limit: int = 10) -> list[Run]:
    return list(
        session.exec(
            select(Run).order_by(col(Run.started_at).desc(), col(Run.id).desc()).limit(limit)
        )
    )
