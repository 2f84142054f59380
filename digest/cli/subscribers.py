"""Subscribers: `digest subscribers add/list/remove/unsuppress`, and the mail that comes back:
`unsubscribes process` and `bounces process`."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


@subscribers.command("unsuppress")
@click.argument("email")
@pass_app
def subscribers_unsuppress(app: App, email: str) -> None:
    """Make a suppressed address active again (its failure count starts from zero).

    Its bounces, its failed deliveries and the suppression itself stay in the store.
    """
    from digest.suppression import lift_suppression

    with app.session() as session:
        try:
            lifted = lift_suppression(session=session, email=email, now=now_utc())
        except UserError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(
        f"{lifted.email} is active again (suppressed after {lifted.failures} permanent "
        f"failures; {lifted.bounces} bounce(s) by mail kept in its history)"
    )
    if lifted.last_bounce:
        click.echo(f"  last bounce: {lifted.last_bounce}")


@contextmanager
def _mailbox_progress(path: Path) -> Iterator[Callable[[int], None]]:
    """A progress bar over the messages of the mailbox at PATH; a path that is no mailbox is
    one line."""
    from digest import inbound

    try:
        total = inbound.count_messages(path)
        with click.progressbar(length=total, label=f"Reading {path.name}", file=sys.stderr) as bar:
            yield bar.update
    except inbound.MailboxError as exc:
        raise click.ClickException(str(exc)) from exc


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

    with app.session() as session, _mailbox_progress(path) as progress:
        report = inbound.process_unsubscribe_requests(
            session=session,
            secret_key=app.settings.secret_key,
            messages=inbound.read_mailbox(path),
            now=now_utc(),
            progress=progress,
        )
    click.echo(
        f"processed {report.processed}, unsubscribed {report.count('unsubscribed')}, "
        f"already unsubscribed {report.count('already unsubscribed')}, "
        f"refused {report.count('refused')}, seen before {report.count('seen before')}"
    )
    for o in report.outcomes:
        who = o.email or o.sender or "(no sender)"
        detail = f": {o.reason}" if o.reason else ""
        click.echo(f"  {o.result:>20}  {who} [message {o.key}]{detail}")


@click.group()
def bounces() -> None:
    """Bounces that come back by mail, to the bounce address of each digest."""


@bounces.command("process")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@pass_app
def bounces_process(app: App, path: Path) -> None:
    """Record the bounces in PATH (an mbox file or a maildir).

    Each is tied to its delivery by the signed token of its bounce address, else by the failed
    address; the delivery is marked failed with the reason, and hard bounces count towards
    suppressing the address like SMTP 5xx answers. A malformed message is reported and
    skipped. Each message is remembered once read: processing the same mailbox again
    changes nothing.
    """
    from digest import inbound
    from digest.bounces import process

    with app.session() as session, _mailbox_progress(path) as progress:
        run = process.process_bounces(
            session=session,
            settings=app.settings,
            messages=inbound.read_mailbox(path),
            now=now_utc(),
            progress=progress,
        )
    counts = ", ".join(f"{result} {run.count(result)}" for result in process.RESULTS)
    click.echo(f"processed {run.messages}: {counts}")
    for o in run.outcomes:
        delivery = f" delivery {o.delivery_id} (by {o.tied_by})" if o.delivery_id else ""
        detail = f": {o.reason}" if o.reason else ""
        click.echo(f"  {o.result:>16}  {o.address or '-'}{delivery} [message {o.key}]{detail}")
