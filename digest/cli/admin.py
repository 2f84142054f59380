"""Operating: `digest status`, `digest check` and `digest serve`."""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import click

from digest import db, delivery
from digest.cli.common import App, now_utc, pass_app
from digest.config import (
    DEV_SECRET_KEY,
    MIN_SECRET_KEY_CHARS,
    SECRET_KEY_FILE,
    Settings,
    redis_problem,
    safe_url,
)
from digest.errorreport import init_error_reporting
from digest.logs import configure_logging, event
from digest.mailer import DeliveryError, SMTPConfig, SMTPConnection
from digest.runs import describe_run, last_runs

log = logging.getLogger(__name__)


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
    return f"encoder: {encoder.model_key} (loads ok; ranking is hybrid: embeddings + BM25)"


@click.command()
@click.option("--limit", default=10, show_default=True)
@pass_app
def status(app: App, limit: int) -> None:
    """The last runs (ingest, plan, send) and the deliveries of the last digest dates."""
    with app.session() as session:
        runs = last_runs(session=session, limit=limit)
    if not runs:
        click.echo("No runs yet.")
    now = now_utc()
    for run in runs:
        started = run.started_at.strftime("%Y-%m-%d %H:%M:%S UTC")
        state = run.status
        if state == "running":
            # A run whose process died never records its end: say for how long it has run.
            state = f"running for {_elapsed(now - run.started_at)}"
        first, *rest = describe_run(run)
        click.echo(f"#{run.id} {run.kind:6s} {started} {state}: {first}")
        for line in rest:
            click.echo(f"    {line}")
    click.echo(_encoder_line(app.plain_settings))
    with app.session() as session:
        counts = delivery.delivery_counts(session=session, days=3)
    for day, states in counts.items():
        parts = ", ".join(f"{state} {n}" for state, n in sorted(states.items()))
        click.echo(f"deliveries for {day.isoformat()}: {parts}")


# --- digest check: each configured part, tried without sending or writing anything ---------

CheckResult = tuple[bool, str]


def _check_database(settings: Settings) -> CheckResult:
    engine = db.make_engine(settings.database_url)
    try:
        status = db.schema_status(engine)
    except db.DatabaseError as exc:
        return False, str(exc)
    finally:
        engine.dispose()
    return status.current, f"{safe_url(settings.database_url)}: {status.describe()}"


def _check_redis(settings: Settings) -> CheckResult:
    problem = redis_problem(settings.redis_url)
    return problem is None, problem or f"{safe_url(settings.redis_url)} answers PING"


def _check_mailer(settings: Settings) -> CheckResult:
    if settings.mailer == "console":
        return True, "console: messages are printed, nothing is sent (DIGEST_MAILER=console)"
    if settings.mailer == "file":
        outbox = settings.outbox_dir.resolve()
        folder = next(p for p in (outbox, *outbox.parents) if p.exists())
        if not (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)):
            return False, f"file: DIGEST_OUTBOX_DIR {outbox} cannot be written by this user"
        return True, f"file: .eml files go to {outbox}, nothing is sent (DIGEST_MAILER=file)"
    config = SMTPConfig.from_url(settings.smtp_url, timeout=min(settings.smtp_timeout, 10.0))
    connection = SMTPConnection(config)
    try:
        connection.open()  # connect, STARTTLS if asked, EHLO, login if a user is given
    except DeliveryError as exc:
        return False, f"DIGEST_SMTP_URL: {exc}"
    connection.close()
    steps = ["EHLO ok"] + (["STARTTLS ok"] if config.starttls else [])
    steps += [f"login as {config.username} ok"] if config.username else []
    return True, f"smtp: {config.host}:{config.port}: {', '.join(steps)}, nothing sent"


def _check_secret_key(settings: Settings) -> CheckResult:
    if settings.secret_key_is_set:
        key, where = settings.secret_key, "DIGEST_SECRET_KEY"
    else:
        path = settings.data_dir / SECRET_KEY_FILE
        if not path.exists():
            return True, (
                f"not set: created in {path.resolve()} on first use (set DIGEST_SECRET_KEY "
                "for processes on several hosts)"
            )
        try:
            key, where = path.read_text(encoding="ascii").strip(), str(path.resolve())
        except (OSError, UnicodeError) as exc:
            return False, f"the key file {path} cannot be read ({exc})"
    if key == DEV_SECRET_KEY:
        return False, f"{where} is the public development key: anyone can forge links"
    if len(key) < MIN_SECRET_KEY_CHARS:
        return False, f"{where} is shorter than {MIN_SECRET_KEY_CHARS} characters"
    return True, f"{where}: {len(key)} characters"


def _check_base_url(settings: Settings) -> CheckResult:
    parts = urlsplit(settings.base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False, (
            f"DIGEST_BASE_URL {settings.base_url!r} is not an http(s) address with a host, "
            "e.g. https://digest.example.org"
        )
    return True, f"links in emails point to {settings.base_url}"


def _check_files(settings: Settings) -> CheckResult:
    needed: list[Path] = [
        settings.templates_dir / "email" / "digest",
        settings.templates_dir / "email" / "confirm",
        settings.templates_dir / "web",
        settings.seeds_dir / "papers.jsonl",
    ]
    missing = [str(path) for path in needed if not path.exists()]
    if missing:
        return False, "missing: " + ", ".join(missing)
    return True, f"templates in {settings.templates_dir}, seeds in {settings.seeds_dir}"


def _check_encoder(settings: Settings) -> CheckResult:
    line = _encoder_line(settings)
    return "FAILS TO LOAD" not in line, line.removeprefix("encoder: ")


CHECKS: tuple[tuple[str, Callable[[Settings], CheckResult]], ...] = (
    ("database", _check_database),
    ("redis", _check_redis),
    ("mailer", _check_mailer),
    ("secret key", _check_secret_key),
    ("base URL", _check_base_url),
    ("files", _check_files),
    ("encoder", _check_encoder),
)


@click.command()
@pass_app
def check(app: App) -> None:
    """Try every configured part (database, Redis, mailer, secret key, base URL, templates
    and seeds, encoder) without sending or changing anything: one line each, exit 1 on a
    FAIL."""
    failed = 0
    for name, run_check in CHECKS:
        ok, detail = run_check(app.plain_settings)
        failed += not ok
        click.echo(f"{name + ':':12s}{'ok  ' if ok else 'FAIL'}  {detail}")
    if failed:
        raise SystemExit(1)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@pass_app
def serve(app: App, host: str, port: int) -> None:
    """Run the web app (subscribe, confirm, unsubscribe, preferences) with waitress."""
    from waitress import serve as waitress_serve

    from digest.config import public_key_refusal
    from digest.web import InsecureSecretKey, check_secret_key, create_app

    try:
        check_secret_key(app.settings)
    except InsecureSecretKey as exc:
        raise click.ClickException(str(exc)) from exc
    refusal = public_key_refusal(app.settings, host=host)
    if refusal:
        raise click.ClickException(refusal)
    if app.settings.uses_default_secret:
        click.echo(
            "warning: signing links with the default development secret key; "
            "set DIGEST_SECRET_KEY before anyone else can reach this server",
            err=True,
        )
    configure_logging(app.settings)  # a server: DIGEST_LOG_LEVEL, not the commands' default
    init_error_reporting(app.settings, process="web")
    web = create_app(app.settings, engine=app.engine, mailer=app.mailer())
    click.echo(f"Serving on http://{host}:{port}/ (links in emails use {app.settings.base_url})")
    event(log, "web.started", host=host, port=port, base_url=app.settings.base_url)
    # waitress drops X-Forwarded-* and Forwarded unless told which proxy to trust; the app
    # decides instead: ProxyFix trusts DIGEST_TRUSTED_PROXY_HOPS of them (rate limits), and
    # /metrics refuses a request that came through a proxy.
    waitress_serve(web, host=host, port=port, clear_untrusted_proxy_headers=False)
