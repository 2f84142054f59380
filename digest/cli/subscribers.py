"""Subscribers: `digest subscribers add/list/remove` and `unsubscribes process`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from digest import subscribers as subscriber_store
from digest.cli.common import App, fail, now_utc, pass_app
from digest.errors import UserError
from digest.models import Frequency, SubscriberStatus

WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


@click.group()
def subscribers() -> None:
    """Add, list and remove subscribers."""


@subscribers.command("add")
@click.argument("email")
@click.option("--topic", "topics", multiple=True, required=True, help="Repeat for each topic.")
@click.option("--exclude", multiple=True, help="Drop papers matching this term (repeatable).")
@click.option("--hour", "send_hour", type=click.IntRange(0, 23), default=None)
@click.option("--timezone", default=None, help="IANA zone, e.g. Europe/Paris.")
@click.option(
    "--weekly",
    type=click.IntRange(0, 6),
    default=None,
    help="Weekly on this day (0=Monday) instead of daily.",
)
@click.option("--pending", is_flag=True, help="Add unconfirmed (no digest until confirmed).")
@pass_app
def subscribers_add(
    app: App,
    email: str,
    topics: tuple[str, ...],
    exclude: tuple[str, ...],
    send_hour: int | None,
    timezone: str | None,
    weekly: int | None,
    pending: bool,
) -> None:
    """Add a confirmed subscriber (admin path: no confirmation email)."""
    with app.session() as session:
        try:
            subscriber = subscriber_store.add_subscriber(
                session=session,
                email=email,
                topics=topics,
                exclude=exclude,
                now=now_utc(),
                status=SubscriberStatus.PENDING if pending else SubscriberStatus.ACTIVE,
                send_hour=app.settings.default_send_hour if send_hour is None else send_hour,
                timezone=timezone or app.settings.default_timezone,
                frequency=Frequency.WEEKLY if weekly is not None else Frequency.DAILY,
                weekly_day=weekly or 0,
            )
        except UserError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"{subscriber.email} ({subscriber.status}): {', '.join(subscriber.topics)}")


@subscribers.command("list")
@pass_app
def subscribers_list(app: App) -> None:
    """Every subscriber with status, schedule (weekly ones with their day) and topics."""
    with app.session() as session:
        rows = subscriber_store.list_subscribers(session=session)
    if not rows:
        click.echo("No subscribers.")
    for s in rows:
        day = f" {WEEKDAYS[s.weekly_day]}" if s.frequency == Frequency.WEEKLY else ""
        when = f"{s.frequency}{day} {s.send_hour:02d}:00 {s.timezone}"
        click.echo(f"{s.email}\t{s.status}\t{when}\t{'; '.join(s.topics)}")


@subscribers.command("remove")
@click.argument("email")
@pass_app
def subscribers_remove(app: App, email: str) -> None:
    """Delete a subscriber and their delivery history."""
    with app.session() as session:
        try:
            removed = subscriber_store.remove_subscriber(session=session, email=email)
        except UserError as exc:
            raise click.ClickException(str(exc)) from exc
    if not removed:
        fail(f"No subscriber with address {email}.")
    click.echo(f"Removed {email}.")


@click.group()
def unsubscribes() -> None:
    """Unsubscribe requests sent to the List-Unsubscribe mailto: address."""


@unsubscribes.command("process")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@pass_app
def unsubscribes_process(app: App, path: Path) -> None:
    """Honour the unsubscribe emails in PATH (an mbox file or a maildir).

    Each message must carry the signed token of its List-Unsubscribe mailto: link in the
    subject (or body); forged, altered or missing tokens are refused and change nothing, and
    a malformed message is reported and skipped. Each message is remembered once read, so
    processing the same mailbox again changes nothing.
    """
    from digest import inbound

    try:
        total = inbound.count_messages(path)
        with (
            app.session() as session,
            click.progressbar(length=total, label=f"Reading {path.name}", file=sys.stderr) as bar,
        ):
            report = inbound.process_unsubscribe_requests(
                session=session,
                secret_key=app.settings.secret_key,
                messages=inbound.read_mailbox(path),
                now=now_utc(),
                progress=bar.update,
            )
    except inbound.MailboxError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"processed {report.processed}, unsubscribed {report.count('unsubscribed')}, "
        f"already unsubscribed {report.count('already unsubscribed')}, "
        f"refused {report.count('refused')}, seen before {report.count('seen before')}"
    )
    for o in report.outcomes:
        who = o.email or o.sender or "(no sender)"
        detail = f": {o.reason}" if o.reason else ""
        click.echo(f"  {o.result:>20}  {who} [message {o.key}]{detail}")
