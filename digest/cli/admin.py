"""Operating: `digest status` and `digest serve`."""

from __future__ import annotations

import datetime as dt
import json

import click

from digest import delivery
from digest.cli.common import App, now_utc, pass_app
from digest.config import Settings
from digest.ingestion import describe_run
from digest.runs import last_runs


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
        if run.kind == "ingest" and "requests" in run.summary:
            first, *rest = describe_run(run)
            click.echo(f"#{run.id} {run.kind:6s} {started} {state}: {first}")
            for line in rest:
                click.echo(f"    {line}")
            continue
        click.echo(f"#{run.id} {run.kind:6s} {started} {state}: {json.dumps(run.summary)}")
    click.echo(_encoder_line(app.plain_settings))
    with app.session() as session:
        counts = delivery.delivery_counts(session=session, days=3)
    for day, states in counts.items():
        parts = ", ".join(f"{state} {n}" for state, n in sorted(states.items()))
        click.echo(f"deliveries for {day.isoformat()}: {parts}")


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
    web = create_app(app.settings, engine=app.engine, mailer=app.mailer())
    click.echo(f"Serving on http://{host}:{port}/ (links in emails use {app.settings.base_url})")
    waitress_serve(web, host=host, port=port)
