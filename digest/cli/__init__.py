"""The admin command line (`digest`), one module per command group: send (send, preview, demo,
why), deliveries (list, release), subscribers (subscribers, unsubscribes, bounces), papers
(ingest, papers, seeds, rank), admin (status, check, serve) and database (db)."""

from __future__ import annotations

import click
from pydantic import ValidationError
from pydantic_settings import SettingsError

from digest.cli import admin, database, deliveries, papers, send, subscribers
from digest.cli.common import App
from digest.config import Settings, describe_settings_error
from digest.errorreport import init_error_reporting
from digest.logs import configure_logging


@click.group()
@click.version_option(package_name="digest-papers-selfhosted")
@click.pass_context
def main(ctx: click.Context) -> None:
    """digest: each subscriber's research papers, once a day, by email."""
    try:
        settings = Settings()
    except ValidationError as exc:
        raise click.ClickException(f"bad settings: {describe_settings_error(exc)}") from exc
    except SettingsError as exc:
        raise click.ClickException(f"bad settings: {exc}") from exc
    # The commands report what happened themselves (`digest check`'s FAIL line says what a
    # WARNING line would): their log lines go to stderr from ERROR up, unless DIGEST_LOG_LEVEL
    # says otherwise (a cron job may want INFO). `digest serve` logs as a server does.
    configure_logging(settings, level=None if "log_level" in settings.model_fields_set else "ERROR")
    init_error_reporting(settings, process="cli")
    ctx.obj = App(settings)


for command in (
    send.send,
    send.preview,
    send.demo,
    send.why,
    deliveries.deliveries,
    admin.status,
    admin.check,
    admin.serve,
    papers.ingest,
    papers.papers,
    papers.seeds,
    papers.rank,
    subscribers.subscribers,
    subscribers.unsubscribes,
    subscribers.bounces,
    database.db_group,
):
    main.add_command(command)

__all__ = ["main"]
