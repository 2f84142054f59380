"""The admin command line: `digest demo`, `digest send`, `digest preview`, subscribers, papers."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import click
from sqlalchemy.engine import Engine
from sqlmodel import Session

from digest import delivery, services
from digest.config import Settings, get_settings
from digest.db import create_schema, make_engine, session_scope
from digest.mailer import FileMailer, Mailer, mailer_for
from digest.models import Frequency, SubscriberStatus

DEMO_EMAIL = "demo@example.com"
DEMO_TOPICS = ("diffusion models", "large language model reasoning", "robot learning")


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class App:
    """What every command needs: settings, and lazily the engine and the mailer."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(self.settings.database_url)
            create_schema(self._engine)
        return self._engine

    @contextmanager
    def session(self) -> Iterator[Session]:
        with session_scope(self.engine) as session:
            yield session

    def mailer(self) -> Mailer:
        return mailer_for(self.settings)


pass_app = click.make_pass_decorator(App)


def _fail(message: str) -> None:
    raise click.ClickException(message)


@click.group()
@click.version_option(package_name="digest")
@click.pass_context
def main(ctx: click.Context) -> None:
    """digest: each subscriber's research papers, once a day, by email."""
    try:
        settings = get_settings()
    except ValueError as exc:
        raise click.ClickException(f"bad settings: {exc}") from exc
    ctx.obj = App(settings)


def _parse_date(value: str | None) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not a date like 2026-06-12") from exc


def print_summary(summary: delivery.SendSummary, *, verbose: bool = True) -> None:
    verb = "would send" if summary.dry_run else "sent"
    click.echo(
        f"{verb} {len(summary.sent)}, skipped {len(summary.skipped)}, "
        f"failed {len(summary.failed)}"
        + (f" (digest date {summary.digest_date})" if summary.digest_date else "")
    )
    if verbose:
        for email, count in summary.sent:
            click.echo(f"  {verb:>10}  {email}: {count} paper{'s' if count != 1 else ''}")
        for email, reason in summary.skipped:
            click.echo(f"  {'skipped':>10}  {email}: {reason}")
        for email, reason in summary.failed:
            click.echo(f"  {'failed':>10}  {email}: {reason}")
    else:
        for label, items in (("skipped", summary.skipped), ("failed", summary.failed)):
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
            )
        except services.UserError as exc:
            raise click.ClickException(str(exc)) from exc
        finally:
            bar = bar_holder.get("bar")
            if bar is not None:
                bar.__exit__(None, None, None)  # type: ignore[attr-defined]
    return summary


@main.command()
@click.option("--email", help="Only this subscriber.")
@click.option(
    "--date",
    "date_text",
    metavar="YYYY-MM-DD",
    help="Digest date (default: each subscriber's local today, at their send hour).",
)
@click.option("--dry-run", is_flag=True, help="Rank and report, send and record nothing.")
@pass_app
def send(app: App, email: str | None, date_text: str | None, dry_run: bool) -> None:
    """Send the digests that are due now (or for --date), then say who got what and why not."""
    summary = _send(app, email=email, date=_parse_date(date_text), dry_run=dry_run)
    print_summary(summary, verbose=len(summary.sent) + len(summary.skipped) <= 50)
    if app.settings.mailer == "file" and summary.sent and not dry_run:
        click.echo(f"Messages are in {services.outbox_path(app.settings)}")
    if summary.failed:
        sys.exit(1)


@main.command()
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
            html, picks, empty = services.preview_digest(
                session=session,
                settings=app.settings,
                email=email,
                now=now_utc(),
                digest_date=_parse_date(date_text),
            )
        except services.UserError as exc:
            raise click.ClickException(str(exc)) from exc
    out = out or Path(f"preview-{email.replace('@', '_at_')}.html")
    out.write_text(html, encoding="utf-8")
    for n, pick in enumerate(picks, start=1):
        click.echo(f"{n:2d}. [{pick.score:.3f}] {pick.paper_id}: {pick.why}")
    if empty:
        click.echo(f"The digest would be empty: {empty}.")
    click.echo(f"Preview written to {out.resolve().as_uri()}")


@main.command()
@click.option("--email", default=DEMO_EMAIL, show_default=True)
@click.option("--topic", "topics", multiple=True, help="Demo topics (repeat the option).")
@pass_app
def demo(app: App, email: str, topics: tuple[str, ...]) -> None:
    """Seeds, a demo subscriber, and today's digest written to ./outbox/ as .eml files."""
    settings = app.settings
    now = now_utc()
    with app.session() as session:
        report = services.load_seeds(session=session, settings=settings, now=now)
        click.echo(f"Seed papers: {report.new} new, {report.read - report.new} already stored.")
        # The demo starts its subscriber afresh each run, so each run shows a whole digest.
        services.remove_subscriber(session=session, email=email)
        subscriber = services.add_subscriber(
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
    else:
        sys.exit(1)


@main.command()
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
                digest_date=_parse_date(date_text),
            )
        except services.UserError as exc:
            raise click.ClickException(str(exc)) from exc
    for line in lines:
        click.echo(line)


def _elapsed(delta: dt.timedelta) -> str:
    minutes = max(0, int(delta.total_seconds() // 60))
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours < 48 else f"{hours // 24} days"


def _encoder_line(settings: Settings) -> str:
    """Which relevance backend is active, and whether its model loads."""
    from digest.encoder import MODEL_NAME, load_encoder

    if settings.encoder == "tfidf":
        return "encoder: tfidf (DIGEST_ENCODER=tfidf, no paper embeddings)"
    try:
        encoder = load_encoder(kind=settings.encoder, threads=settings.encoder_threads)
    except Exception as exc:  # a broken install: say so, the status goes on
        return f"encoder: {MODEL_NAME} FAILS TO LOAD ({exc}); ranking falls back to tfidf"
    if encoder is None:
        return f"encoder: {MODEL_NAME} not installed; ranking falls back to tfidf"
    return f"encoder: {encoder.model_key} (loads ok)"


@main.command()
@click.option("--limit", default=10, show_default=True)
@pass_app
def status(app: App, limit: int) -> None:
    """The last runs (ingest, plan, send) and the deliveries of the last digest dates."""
    with app.session() as session:
        runs = services.last_runs(session=session, limit=limit)
    if not runs:
        click.echo("No runs yet.")
    now = now_utc()
    for run in runs:
        started = run.started_at.strftime("%Y-%m-%d %H:%M:%S UTC")
        state = run.status
        if state == "running":
            # A run whose process died never records its end: say for how long it has run.
            state = f"running for {_elapsed(now - run.started_at)}"
        if run.kind == "ingest" and "requests" in run.summary:
            from digest.ingestion import describe_run

            first, *rest = describe_run(run)
            click.echo(f"#{run.id} {run.kind:6s} {started} {state}: {first}")
            for line in rest:
                click.echo(f"    {line}")
            continue
        click.echo(f"#{run.id} {run.kind:6s} {started} {state}: {json.dumps(run.summary)}")
    click.echo(_encoder_line(app.settings))
    with app.session() as session:
        counts = delivery.delivery_counts(session=session, days=3)
    for day, states in counts.items():
        parts = ", ".join(f"{state} {n}" for state, n in sorted(states.items()))
        click.echo(f"deliveries for {day.isoformat()}: {parts}")


@main.command()
@click.option(
    "--source",
    "sources",
    multiple=True,
    type=click.Choice(["hf", "arxiv", "seeds"]),
    help="Source to ingest (repeatable; default: DIGEST_INGEST_SOURCES).",
)
@click.option(
    "--date",
    "date_text",
    metavar="YYYY-MM-DD",
    help="HF: that day's Daily Papers; arXiv: papers submitted that day (API). "
    "Default: the latest HF listing and today's arXiv announcements (RSS).",
)
@click.option(
    "--category",
    "categories",
    multiple=True,
    help="arXiv category (repeatable; default: DIGEST_ARXIV_CATEGORIES).",
)
@pass_app
def ingest(
    app: App, sources: tuple[str, ...], date_text: str | None, categories: tuple[str, ...]
) -> None:
    """Fetch papers from the sources now, store them, and say what came in and why not."""
    from digest.config import ARXIV_CATEGORY
    from digest.ingestion import describe_run, ingest_source

    for category in categories:
        if not ARXIV_CATEGORY.match(category):
            raise click.BadParameter(f"{category!r} is not an arXiv category like cs.LG")
    day = _parse_date(date_text)
    failed = False
    with app.session() as session:
        for source in sources or app.settings.ingest_sources:
            if source == "arxiv":
                click.echo(
                    "arXiv: one request every "
                    f"{app.settings.arxiv_delay_seconds:g} s, as its terms ask...",
                    err=True,
                )
            run = ingest_source(
                session=session,
                settings=app.settings,
                source=source,
                now=now_utc(),
                day=day,
                categories=categories or None,
            )
            first, *rest = describe_run(run)
            click.echo(f"{run.status}: {first}")
            for line in rest:
                click.echo(f"  {line}")
            failed = failed or run.status == "failed"
    if failed:
        sys.exit(1)


@main.group()
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
            subscriber = services.add_subscriber(
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
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"{subscriber.email} ({subscriber.status}): {', '.join(subscriber.topics)}")


@subscribers.command("list")
@pass_app
def subscribers_list(app: App) -> None:
    """Every subscriber with status, schedule and topics."""
    with app.session() as session:
        rows = services.list_subscribers(session=session)
    if not rows:
        click.echo("No subscribers.")
    for s in rows:
        when = f"{s.frequency} {s.send_hour:02d}:00 {s.timezone}"
        click.echo(f"{s.email}\t{s.status}\t{when}\t{'; '.join(s.topics)}")


@subscribers.command("remove")
@click.argument("email")
@pass_app
def subscribers_remove(app: App, email: str) -> None:
    """Delete a subscriber and their delivery history."""
    with app.session() as session:
        try:
            removed = services.remove_subscriber(session=session, email=email)
        except services.UserError as exc:
            raise click.ClickException(str(exc)) from exc
    if not removed:
        _fail(f"No subscriber with address {email}.")
    click.echo(f"Removed {email}.")


@main.group()
def papers() -> None:
    """Import and export papers in the JSON Lines paper format."""


@papers.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@pass_app
def papers_import(app: App, file: Path) -> None:
    """Import a .jsonl (or .jsonl.gz) paper file; bad lines are reported, good ones kept."""
    import gzip
    import io

    # Progress is measured in bytes of the file as stored, so the file is read only once.
    with file.open("rb") as raw, app.session() as session:
        binary = gzip.GzipFile(fileobj=raw) if file.suffix == ".gz" else raw
        with (
            io.TextIOWrapper(binary, encoding="utf-8") as handle,
            click.progressbar(
                length=file.stat().st_size, label=f"Importing {file.name}", file=sys.stderr
            ) as bar,
        ):
            done = 0

            def progress(_papers: int) -> None:
                nonlocal done
                bar.update(raw.tell() - done)
                done = raw.tell()

            report = services.import_papers(
                session=session, lines=handle, now=now_utc(), progress=progress
            )
            bar.update(file.stat().st_size - done)
    click.echo(
        f"{report.new} new, {report.updated} updated, {report.unchanged} unchanged, "
        f"{len(report.bad_lines)} bad lines"
    )
    for bad in report.bad_lines[:20]:
        click.echo(f"  line {bad.line_number}: {bad.error}", err=True)
    if len(report.bad_lines) > 20:
        click.echo(f"  ... and {len(report.bad_lines) - 20} more", err=True)


@papers.command("embed")
@click.option("--since", "since_text", metavar="DATE", help="Only papers first seen on or after.")
@pass_app
def papers_embed(app: App, since_text: str | None) -> None:
    """Encode the papers that have no embedding for the active encoder (resumable: each batch
    is committed, and a second run finds nothing to do)."""
    from digest.embedding_store import embed_missing_papers
    from digest.encoder import load_encoder

    since_day = _parse_date(since_text)
    since = dt.datetime.combine(since_day, dt.time(0), tzinfo=dt.UTC) if since_day else None
    encoder = load_encoder(kind=app.settings.encoder, threads=app.settings.encoder_threads)
    if encoder is None:
        _fail(f"no encoder: DIGEST_ENCODER={app.settings.encoder} or the model is not installed")
        return
    with app.session() as session, contextlib.ExitStack() as stack:
        bars: list[Any] = []

        def on_total(total: int) -> None:
            bars.append(
                stack.enter_context(
                    click.progressbar(length=total, label="Embedding", file=sys.stderr)
                )
            )

        done = embed_missing_papers(
            session=session,
            encoder=encoder,
            since=since,
            batch_size=app.settings.embed_batch_size,
            on_total=on_total,
            progress=lambda n: bars[0].update(n),
        )
    click.echo(f"Embedded {done} papers with {encoder.model_key}")


@papers.command("export")
@click.option("--out", type=click.File("w", encoding="utf-8"), default="-")
@pass_app
def papers_export(app: App, out: IO[str]) -> None:
    """Write every stored paper as JSON Lines (stdout by default)."""
    from digest.papers import write_papers

    with app.session() as session:
        count = write_papers(services.export_papers(session=session), out)  # type: ignore[arg-type]
    click.echo(f"{count} papers exported", err=True)


@main.group()
def seeds() -> None:
    """The bundled seed papers."""


@seeds.command("load")
@pass_app
def seeds_load(app: App) -> None:
    """Load the bundled seed papers into the store."""
    with app.session() as session:
        report = services.load_seeds(session=session, settings=app.settings, now=now_utc())
    click.echo(f"{report.new} new, {report.updated} updated, {report.unchanged} unchanged")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@pass_app
def serve(app: App, host: str, port: int) -> None:
    """Run the web app (subscribe, confirm, unsubscribe, preferences) with waitress."""
    from waitress import serve as waitress_serve

    from digest.web import InsecureSecretKey, check_secret_key, create_app

    try:
        check_secret_key(app.settings)
    except InsecureSecretKey as exc:
        raise click.ClickException(str(exc)) from exc
    if app.settings.uses_default_secret:
        click.echo(
            "warning: signing links with the default development secret key; "
            "set DIGEST_SECRET_KEY before anyone else can reach this server",
            err=True,
        )
    web = create_app(app.settings, engine=app.engine, mailer=app.mailer())
    click.echo(f"Serving on http://{host}:{port}/ (links in emails use {app.settings.base_url})")
    waitress_serve(web, host=host, port=port)


@main.group()
def unsubscribes() -> None:
    """Unsubscribe requests sent to the List-Unsubscribe mailto: address."""


@unsubscribes.command("process")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@pass_app
def unsubscribes_process(app: App, path: Path) -> None:
    """Honour the unsubscribe emails in PATH (an mbox file or a maildir).

    Each message must carry the signed token of its List-Unsubscribe mailto: link in the
    subject (or body); forged, altered or missing tokens are refused and change nothing.
    Processing the same mailbox twice is harmless.
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
        f"refused {report.count('refused')}"
    )
    for o in report.outcomes:
        who = o.email or o.sender or "(no sender)"
        detail = f": {o.reason}" if o.reason else ""
        click.echo(f"  {o.result:>20}  {who} [message {o.key}]{detail}")


@main.command()
@click.option(
    "--papers",
    "papers_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Candidate papers, JSON Lines in the paper format (.jsonl or .jsonl.gz).",
)
@click.option(
    "--profiles",
    "profiles_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='Profiles, JSON Lines: {"id", "topics", "exclude", "liked", "disliked"}.',
)
@click.option("--now", "now_text", metavar="ISO-TIME", help="Rank as of this time (default: now).")
@click.option("--top", default=10, show_default=True, type=click.IntRange(1, 1000))
@pass_app
def rank(app: App, papers_file: Path, profiles_file: Path, now_text: str | None, top: int) -> None:
    """Rank PAPERS for each profile: one JSON line per profile on stdout, no database touched.

    Bad lines are reported on stderr and skipped; the exit status is 1 if there were any.
    """
    import dataclasses
    import gzip
    from collections.abc import Callable, Iterable

    from digest.papers import BadLine
    from digest.rankfile import read_profiles, read_rank_papers, result_line
    from digest.ranking import TopicModel, rank_papers

    if now_text is None:
        now = now_utc()
    else:
        try:
            now = dt.datetime.fromisoformat(now_text.strip().replace("Z", "+00:00"))
        except ValueError as exc:
            raise click.BadParameter(
                f"{now_text!r} is not a time like 2026-06-12T08:00:00Z", param_hint="--now"
            ) from exc
        if now.tzinfo is None:
            now = now.replace(tzinfo=dt.UTC)

    def read(
        path: Path, reader: Callable[[Iterable[str]], Iterator[Any]]
    ) -> tuple[list[Any], list[BadLine]]:
        opener = gzip.open if path.suffix == ".gz" else open
        good: list[Any] = []
        bad: list[BadLine] = []
        try:
            with opener(path, "rt", encoding="utf-8") as handle:  # type: ignore[operator]
                for item in reader(handle):
                    (bad if isinstance(item, BadLine) else good).append(item)
        except (UnicodeDecodeError, OSError) as exc:
            raise click.ClickException(f"cannot read {path}: {exc}") from exc
        for line in bad:
            click.echo(f"{path.name} line {line.line_number}: {line.error} (skipped)", err=True)
        return good, bad

    papers, bad_papers = read(papers_file, read_rank_papers)
    profiles, bad_profiles = read(profiles_file, read_profiles)
    config = dataclasses.replace(services.ranking_config(app.settings), top_k=top)
    model = TopicModel.fit([p.text for p in papers]) if papers else None
    # The papers' embeddings, for the dense part of the ranking; a paper seen by an earlier run
    # (same model, same text) comes from the cache instead of the encoder.
    from digest.embedding_store import cache_for, paper_embeddings
    from digest.encoder import load_encoder

    encoder = load_encoder(kind=app.settings.encoder, threads=app.settings.encoder_threads)
    if encoder is not None and papers:
        cache = cache_for(app.settings.cache_dir)
        paper_embeddings(encoder=encoder, papers=papers, cache=cache)
        click.echo(
            f"Embeddings: {cache.hits} cached, {cache.misses} encoded ({encoder.model_key})",
            err=True,
        )
    batch = 500
    with click.progressbar(
        length=len(profiles), label="Ranking", file=sys.stderr, hidden=not sys.stderr.isatty()
    ) as bar:
        for start in range(0, len(profiles), batch):
            chunk = profiles[start : start + batch]
            ranked = rank_papers(papers, chunk, now=now, config=config, model=model)
            for profile, picks in zip(chunk, ranked, strict=True):
                click.echo(result_line(profile, picks))
            bar.update(len(chunk))
    click.echo(
        f"Ranked {len(papers)} papers for {len(profiles)} profiles as of {now.isoformat()}"
        + (
            f"; skipped {len(bad_papers)} bad paper and {len(bad_profiles)} bad profile lines"
            if bad_papers or bad_profiles
            else ""
        ),
        err=True,
    )
    if bad_papers or bad_profiles:
        sys.exit(1)


if __name__ == "__main__":
    main()
