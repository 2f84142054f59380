"""`digest db`: the database schema, its revision, upgrades and downgrades (Alembic)."""

from __future__ import annotations

import sys

import click

from digest import db
from digest.cli.common import App, pass_app, schema_errors
from digest.db import make_engine


@click.group("db")
def db_group() -> None:
    """The database schema: its revision, upgrades and downgrades (Alembic)."""


@db_group.command("upgrade")
@click.argument("revision", default="head")
@pass_app
def db_upgrade(app: App, revision: str) -> None:
    """Bring the database to REVISION (default: the code's); adopts one made before
    migrations. Safe to run from several processes at once."""
    with schema_errors():
        lines = db.upgrade_schema(make_engine(app.settings.database_url), revision)
    click.echo("\n".join(lines))


@db_group.command("current")
@pass_app
def db_current(app: App) -> None:
    """Print the database's revision; exit 1 when it is not the code's."""
    with schema_errors():
        status = db.schema_status(make_engine(app.settings.database_url))
    click.echo(status.describe())
    if not status.current:
        sys.exit(1)


@db_group.command("downgrade")
@click.argument("revision")
@click.option("--yes", is_flag=True, help="Do not ask: a downgrade can drop columns and data.")
@pass_app
def db_downgrade(app: App, revision: str, yes: bool) -> None:
    """Take the database back to REVISION (`base` drops every table)."""
    if not yes:
        click.confirm(f"Downgrade to {revision}? Dropped columns lose their data", abort=True)
    with schema_errors():
        lines = db.downgrade_schema(make_engine(app.settings.database_url), revision)
    click.echo("\n".join(lines))


@db_group.command("revision")
@click.option("-m", "--message", required=True, help="What the change is, e.g. 'add paper x'.")
def db_revision(message: str) -> None:
    """Write a new revision from the models' differences (run it in a source checkout)."""
    click.echo(f"wrote {db.new_revision(message)}: read it, then commit it with the models")
