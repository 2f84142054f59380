"""Sending: `digest send`, `preview`, `demo` and `why`."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import click

from digest import db, delivery, digests, paperstore
from digest import subscribers as subscriber_store
from digest.cli.common import App, now_utc, parse_date, pass_app, schema_errors
from digest.db import make_engine
from digest.errors import UserError
from digest.mailer import FileMailer, Mailer

DEMO_EMAIL = "demo@example.com"
DEMO_TOPICS = ("diffusion models", "large language model reasoning", "robot learning")


def print_summary(summary: delivery.SendSummary, *, verbose: bool = True) -> None:
    verb = "would send" if summary.dry_run else "sent"
    click.echo(
        f"{verb} {len(summary.sent)}, skipped {len(summary.skipped)}, "
        f"failed {len(summary.failed)}"
        + (f", unconfirmed {len(summary.unconfirmed)}" if summary.unconfirmed else "")
        + (f", left to another sender {summary.stopped}" if summary.stopped else "")
        + (f" (digest date {summary.digest_date})" if summary.digest_date else "")
    )
    if verbose:
        for email, count in summary.sent:
            click.echo(f"  {verb:>10}  {email}: {count} paper{'s' if count != 1 else ''}")
        for email, reason in summary.skipped:
            click.echo(f"  {'skipped':>10}  {email}: {reason}")
        for email, reason in summary.failed:
            click.echo(f"  {'failed':>10}  {email}: {reason}")
        for email, reason in summary.unconfirmed:
            click.echo(f"  {'unconfirmed':>10}  {email}: {reason}")
    else:
        for label, items in (
            ("skipped", summary.skipped),
            ("failed", summary.failed),
            ("unconfirmed", summary.unconfirmed),
        ):
            for reason, count in delivery.count_reasons(items).items():
                click.echo(f"  {label}: {count} ({reason})")


def _send(
    app: App,
    *,
    email: str | None,
    date: dt.date | None,
    dry_run: bool,
    mailer: Mailer | None = None,
) -> delivery.SendSummary:
    now = now_utc()
    mailer = mailer or app.mailer()
    with app.session() as session:
        bar_holder: dict[str, object] = {}

        def on_total(total: int) -> None:
            if total > 1 and sys.stderr.isatty():
                bar = click.progressbar(length=total, label="Sending digests", file=sys.stderr)
                bar.__enter__()
                bar_holder["bar"] = bar

        def progress(n: int) -> None:
            bar = bar_holder.get("bar")
            if bar is not None:
                bar.update(n)  # type: ignore[attr-defined]

        try:
            summary = delivery.send_due_digests(
                session=session,
                mailer=mailer,
                settings=app.settings,
                now=now,
                digest_date=date,
                email=email,
                dry_run=dry_run,
                progress=progress,
                on_total=on_total,
                clock=now_utc,
            )
        except UserError as exc:
            raise click.ClickException(str(exc)) from exc
        finally:
            bar = bar_holder.get("bar")
            if bar is not None:
                bar.__exit__(None, None, None)  # type: ignore[attr-defined]
    return summary


@click.command()
@click.option("--email", help="Only this subscriber.")
@click.option(
    "--date",
    "date_text",
    metavar="YYYY-MM-DD",
    help="Digest date (default: each subscriber's local today, at their send hour).",
)
@click.option("--dry-run", is_flag=True, help="Rank and report, send and record nothing.")
@click.option(
    "--allow-future",
    is_flag=True,
    help="Send a --date after today (UTC) now, ranked on today's papers; that day's own send "
    "then skips it as already sent.",
)
@pass_app
def send(
    app: App, email: str | None, date_text: str | None, dry_run: bool, allow_future: bool
) -> None:
    """Send the digests that are due now (or for --date), then say who got what and why not."""
    date = parse_date(date_text)
    today = now_utc().date()
    if date is not None and date > today and not (allow_future or dry_run):
        # Sent now it would be ranked on today's papers and use that day up: its real send
        # would then be skipped as already sent.
        raise click.ClickException(
            f"--date {date.isoformat()} is after today ({today.isoformat()} UTC): its digest "
            "is sent on that day; --dry-run to look at it now, --allow-future to send it anyway"
        )
    summary = _send(app, email=email, date=date, dry_run=dry_run)
    print_summary(summary, verbose=len(summary.sent) + len(summary.skipped) <= 50)
    if app.settings.mailer == "file" and summary.sent and not dry_run:
        click.echo(f"Messages are in {app.settings.outbox_dir.resolve()}")
    if summary.failed or summary.unconfirmed:
        sys.exit(1)


@click.command()
@click.argument("email")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="HTML file to write (default: preview-<address>.html).",
)
@click.option("--date", "date_text", metavar="YYYY-MM-DD")
@pass_app
def preview(app: App, email: str, out: Path | None, date_text: str | None) -> None:
    """Write the digest EMAIL would get, as HTML, without sending or recording anything."""
    with app.session() as session:
        try:
            html, picks, empty = digests.preview_digest(
                session=session,
                settings=app.settings,
                email=email,
                now=now_utc(),
                digest_date=parse_date(date_text),
            )
        except UserError as exc:
            raise click.ClickException(str(exc)) from exc
    out = out or Path(f"preview-{email.replace('@', '_at_')}.html")
    out.write_text(html, encoding="utf-8")
    for n, pick in enumerate(picks, start=1):
        click.echo(f"{n:2d}. [{pick.score:.3f}] {pick.paper_id}: {pick.why}")
    if empty:
        click.echo(f"The digest would be empty: {empty}.")
    click.echo(f"Preview written to {out.resolve().as_uri()}")


@click.command()
@click.option("--email", default=DEMO_EMAIL, show_default=True)
@click.option("--topic", "topics", multiple=True, help="Demo topics (repeat the option).")
@pass_app
def demo(app: App, email: str, topics: tuple[str, ...]) -> None:
    """Seeds, a demo subscriber, and today's digest written to ./outbox/ as .eml files."""
    settings = app.settings
    now = now_utc()
    # The demo's own database (the embedded SQLite of a first try) may be upgraded in place.
    with schema_errors():
        db.upgrade_schema(make_engine(settings.database_url))
    with app.session() as session:
        report = paperstore.load_seeds(session=session, settings=settings, now=now)
        click.echo(f"Seed papers: {report.new} new, {report.read - report.new} already stored.")
        # The demo starts its subscriber afresh each run, so each run shows a whole digest.
        subscriber_store.remove_subscriber(session=session, email=email)
        subscriber = subscriber_store.add_subscriber(
            session=session,
            email=email,
            topics=topics or DEMO_TOPICS,
            now=now,
        )
        click.echo(f"Demo subscriber {subscriber.email}: {', '.join(subscriber.topics)}")
    mailer = FileMailer(settings.outbox_dir)
    summary = _send(app, email=email, date=now.date(), dry_run=False, mailer=mailer)
    print_summary(summary)
    if summary.sent:
        files = sorted(settings.outbox_dir.glob("*.eml"), key=lambda p: p.stat().st_mtime)
        click.echo(f"Your digest is in {files[-1].resolve()}")
        click.echo(
            f"Open it in a mail client, or run `digest preview {email}` to see it in a browser."
        )
        click.echo(
            f"Its links (unsubscribe, preferences, feedback, web copy) point to "
            f"{settings.base_url}: run `digest serve` in this folder to follow them."
        )
    else:
        sys.exit(1)


@click.command()
@click.argument("email")
@click.option(
    "--date",
    "date_text",
    metavar="YYYY-MM-DD",
    help="Digest date (default: the subscriber's local today).",
)
@pass_app
def why(app: App, email: str, date_text: str | None) -> None:
    """What EMAIL got on a digest date, or why they got nothing."""
    with app.session() as session:
        try:
            lines = delivery.why(
                session=session,
                settings=app.settings,
                email=email,
                now=now_utc(),
                digest_date=parse_date(date_text),
            )
        except UserError as exc:
            raise click.ClickException(str(exc)) from exc
    for line in lines:
        click.echo(line)
