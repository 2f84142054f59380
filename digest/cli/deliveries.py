"""`digest deliveries`: the deliveries that need an operator's eye (unconfirmed, held by a
sender, waiting for a retry) and the release of unconfirmed ones."""

from __future__ import annotations

import click
from sqlalchemy import select
from sqlmodel import col

from digest import delivery
from digest.cli.common import App, now_utc, parse_date, pass_app
from digest.models import Delivery, DeliveryState, Subscriber

_ATTENTION = (DeliveryState.UNCONFIRMED, DeliveryState.SENDING, DeliveryState.PLANNED)


@click.group("deliveries")
def deliveries() -> None:
    """Deliveries that need an operator: list them, release unconfirmed ones."""


@deliveries.command("list")
@click.option("--date", "date_text", metavar="YYYY-MM-DD", help="Only this digest date.")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice([s.value for s in DeliveryState]),
    help="Only these states (default: unconfirmed, sending, planned, failed with a retry).",
)
@pass_app
def list_deliveries(app: App, date_text: str | None, states: tuple[str, ...]) -> None:
    """One line per delivery: id, date, address, state, holder or reason."""
    wanted = list(states) or [s.value for s in _ATTENTION]
    statement = (
        select(Delivery, col(Subscriber.email))
        .join(Subscriber, col(Subscriber.id) == col(Delivery.subscriber_id))
        .order_by(col(Delivery.id))
    )
    if states:
        statement = statement.where(col(Delivery.state).in_(wanted))
    else:
        statement = statement.where(
            col(Delivery.state).in_(wanted)
            | (
                (col(Delivery.state) == DeliveryState.FAILED.value)
                & col(Delivery.retry_at).is_not(None)
            )
        )
    day = parse_date(date_text)
    if day is not None:
        statement = statement.where(col(Delivery.digest_date) == day)
    with app.session() as session:
        rows = session.execute(statement).all()
    if not rows:
        click.echo("Nothing to look at.")
    for row, email in rows:
        click.echo(f"#{row.id} {email} {delivery.describe_delivery(row)}")


@deliveries.command("release")
@click.argument("ids", nargs=-1, type=int)
@click.option("--date", "date_text", metavar="YYYY-MM-DD", help="Every unconfirmed of a date.")
@pass_app
def release(app: App, ids: tuple[int, ...], date_text: str | None) -> None:
    """Send unconfirmed deliveries again (by id, or every one of --date): they may then arrive
    twice. The next sweep (or `digest send`) sends them."""
    day = parse_date(date_text)
    if not ids and day is None:
        raise click.UsageError("give delivery ids (see `digest deliveries list`) or --date")
    with app.session() as session:
        chosen = list(ids)
        if day is not None:
            chosen += [
                row[0]
                for row in session.execute(
                    select(col(Delivery.id)).where(
                        col(Delivery.digest_date) == day,
                        col(Delivery.state) == DeliveryState.UNCONFIRMED.value,
                    )
                )
            ]
        released = delivery.release_unconfirmed(session, chosen, now_utc(), by="an operator")
        session.commit()
    click.echo(
        f"released {len(released)} unconfirmed deliver{'y' if len(released) == 1 else 'ies'}"
        + (
            f" (not unconfirmed, left alone: {len(set(chosen) - set(released))})"
            if set(chosen) - set(released)
            else ""
        )
    )
