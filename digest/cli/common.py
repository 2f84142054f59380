"""What every command shares: the App (settings, engine, sessions, mailer), the clock and
date parsing."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager

import click
from sqlalchemy.engine import Engine
from sqlmodel import Session

from digest import db
from digest.config import Settings, with_kept_secret_key
from digest.db import make_engine, session_scope
from digest.mailer import Mailer, mailer_for


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class App:
    """What every command needs: settings, and lazily the engine and the mailer."""

    def __init__(self, settings: Settings) -> None:
        # As read; the secret key is kept (or created) only for a command that signs links,
        # so that `digest rank` or `papers export` write nothing, even in a read-only folder.
        self.plain_settings = settings
        self._settings: Settings | None = None
        self._engine: Engine | None = None

    @property
    def settings(self) -> Settings:
        """The settings with the secret key links are signed with."""
        if self._settings is None:
            try:
                self._settings = with_kept_secret_key(self.plain_settings)
            except ValueError as exc:
                raise click.ClickException(f"bad settings: {exc}") from exc
        return self._settings

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(self.plain_settings.database_url)
            with schema_errors():
                db.require_current_schema(self._engine)
        return self._engine

    @contextmanager
    def session(self) -> Iterator[Session]:
        with session_scope(self.engine) as session:
            yield session

    def mailer(self) -> Mailer:
        return mailer_for(self.settings)


pass_app = click.make_pass_decorator(App)


@contextmanager
def schema_errors() -> Iterator[None]:
    """A database that cannot be reached, or is not at the code's revision, is one line (why,
    what to run), not a traceback."""
    try:
        yield
    except db.DatabaseError as exc:
        raise click.ClickException(str(exc)) from exc


def fail(message: str) -> None:
    raise click.ClickException(message)


def parse_date(value: str | None) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not a date like 2026-06-12") from exc
