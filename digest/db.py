"""The database engine and sessions, and its schema: Alembic revisions, run under one lock."""

from __future__ import annotations

import fcntl
import importlib.util
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import any_, bindparam, event, inspect, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Session, SQLModel, create_engine

from digest import models  # noqa: F401  (registers the tables on SQLModel.metadata)
from digest.errors import DigestError
from digest.migrations import adopt, baseline

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
UPGRADE_HINT = "run `digest db upgrade`"
# The PostgreSQL advisory lock every digest process takes to change the schema (any constant
# they agree on; this one spells "digest").
SCHEMA_LOCK_KEY = 0x646967657374
_memory_lock = threading.Lock()


class DatabaseError(DigestError):
    """The database cannot be used as configured; the message (one line) says why."""


class SchemaError(DatabaseError):
    """The database's schema is not the one this code works with; the message says what to do."""


class DatabaseUnreachable(DatabaseError):
    """DIGEST_DATABASE_URL leads nowhere: nothing listening, a refused role, a missing folder."""


def _shown_url(engine: Engine) -> str:
    shown = engine.url.render_as_string(hide_password=True)
    return shown.replace("postgresql+psycopg://", "postgresql://", 1)


def _require_sqlite_folder(engine: Engine) -> None:
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return
    if database.startswith("file:"):
        return
    folder = Path(database).parent
    if not folder.is_dir():
        raise DatabaseUnreachable(
            f"DIGEST_DATABASE_URL: the folder {folder.resolve()} of the SQLite file "
            f"{Path(database).name} does not exist: create it, or give an absolute path that "
            "exists (sqlite:////var/lib/digest/digest.db)"
        )


@contextmanager
def first_connection(engine: Engine) -> Iterator[Connection]:
    """A connection, or a DatabaseUnreachable that says in one line why there is none."""
    _require_sqlite_folder(engine)
    try:
        connection = engine.connect()
    except OperationalError as exc:
        reason = " ".join(str(exc.orig or exc).split())[:300]
        raise DatabaseUnreachable(
            f"DIGEST_DATABASE_URL: cannot connect to {_shown_url(engine)} ({reason})"
        ) from exc
    with connection:
        yield connection


def _use_wal(cursor: Any, patience: float = 30.0) -> None:
    """Put the SQLite file in WAL mode (a lasting property of the file, so set once). Processes
    opening a fresh file together each try to switch it; SQLite answers the losers "database
    is locked" at once, without waiting its busy timeout, so they try again here."""
    import sqlite3
    import time

    deadline = time.monotonic() + patience
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def make_engine(database_url: str) -> Engine:
    if database_url.startswith("postgresql://"):
        # psycopg 3 is the driver we ship; SQLAlchemy's bare scheme means psycopg2.
        database_url = "postgresql+psycopg://" + database_url.removeprefix("postgresql://")
    if database_url.startswith("sqlite"):
        engine = create_engine(database_url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            # WAL lets the web app read while a worker writes; foreign keys are off by default.
            _use_wal(cursor)
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_engine(database_url, pool_pre_ping=True)


# PostgreSQL error classes a retry can cure: connection exceptions, the server shutting down
# or starting, too many connections, serialization failures and deadlocks.
_TRANSIENT_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300", "40001", "40P01")


def is_transient(exc: BaseException) -> bool:
    """A database error that trying again soon can cure: the connection went away (a restart,
    a network blip), the server is starting or shutting down, a serialization failure or a
    deadlock, a locked SQLite file. Constraint violations and programming errors are not."""
    import sqlite3

    import psycopg
    from sqlalchemy.exc import DBAPIError, InterfaceError

    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError):
            return True
        return exc.orig is not None and is_transient(exc.orig)
    if isinstance(exc, psycopg.Error):
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            return True
        state = exc.sqlstate
        if state is None:
            # A bare DatabaseError without a SQLSTATE is what libpq reports for a connection
            # that closed under a statement ("server closed the connection unexpectedly").
            return type(exc) is psycopg.DatabaseError
        return state.startswith(_TRANSIENT_SQLSTATES)
    return isinstance(exc, sqlite3.OperationalError)


def one_of(session: Session, column: Any, values: Iterable[Any]) -> ColumnElement[bool]:
    """`column IN (values)`; on PostgreSQL `column = ANY(array)`, one parameter however many
    values: a batch's 500 ids as 500 placeholders cost the driver more to parse than the
    database to run."""
    values = list(values)
    if session.get_bind().dialect.name == "postgresql":
        return cast(
            ColumnElement[bool], column == any_(bindparam(None, values, type_=ARRAY(column.type)))
        )
    return column.in_(values)  # type: ignore[no-any-return]


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session:
        yield session


# --- schema: revisions, the lock, adoption of databases made before migrations ----------------


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, built here instead of read from an alembic.ini: the revisions
    ship inside the package, and env.py runs them on `connection`."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    config.set_main_option("file_template", "%%(year)d%%(month).2d%%(day).2d_%%(rev)s_%%(slug)s")
    config.attributes["connection"] = connection
    return config


@lru_cache(maxsize=1)
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The revision the code works with (one head: parallel revisions must be merged)."""
    head = _scripts().get_current_head()
    assert head is not None, "digest/migrations/versions/ holds no revision"
    return head


def baseline_revision() -> str:
    base = _scripts().get_base()
    assert base is not None, "digest/migrations/versions/ holds no revision"
    return base


def _has_store_tables(connection: Connection) -> bool:
    names = set(inspect(connection).get_table_names())
    return bool(names & set(baseline.baseline_metadata().tables))


@dataclass(frozen=True)
class SchemaStatus:
    revision: str | None  # what alembic_version holds; None: no version (empty, or unversioned)
    head: str
    has_tables: bool

    @property
    def current(self) -> bool:
        return self.revision == self.head

    @property
    def empty(self) -> bool:
        return self.revision is None and not self.has_tables

    def describe(self) -> str:
        """One line: where the database stands, and what to do when it is not current."""
        if self.current:
            return f"the database is at {self.revision} (head)"
        if self.empty:
            return f"the database is empty: {UPGRADE_HINT} to create its tables at {self.head}"
        if self.revision is None:
            return f"the database was made before migrations: {UPGRADE_HINT} to adopt it"
        try:
            known = _scripts().get_revision(self.revision) is not None
        except CommandError:
            known = False
        if not known:
            return (
                f"the database is at revision {self.revision}, which this code does not know "
                f"(migrated by newer code?); this code works with {self.head}"
            )
        return f"the database is at revision {self.revision}, behind the code's {self.head}: " + (
            UPGRADE_HINT
        )


def schema_status(engine: Engine) -> SchemaStatus:
    with first_connection(engine) as connection:
        revision = MigrationContext.configure(connection).get_current_revision()
        has_tables = revision is not None or _has_store_tables(connection)
    return SchemaStatus(revision=revision, head=head_revision(), has_tables=has_tables)


def require_current_schema(engine: Engine) -> None:
    """What every process does at start: go on only with a database at the code's revision.

    An empty database is created (nothing there to lose, and a first start just works); any
    other that is not current is left alone for `digest db upgrade`, with one line saying so.
    """
    status = schema_status(engine)
    if status.current:
        return
    if not status.empty:
        # Another process may be migrating right now: SQLite's DDL is not transactional, so
        # its tables appear one by one before their revision is written. Look again once the
        # process changing the schema (it holds the lock) is done.
        with schema_lock(engine):
            pass
        status = schema_status(engine)
        if status.current:
            return
    if status.empty:
        upgrade_schema(engine)
        if schema_status(engine).current:
            return
    raise SchemaError(status.describe())


@contextmanager
def schema_lock(engine: Engine) -> Iterator[Connection]:
    """A connection that alone may change the schema until the block ends: processes that
    start together take turns, and each looks at the schema only once it holds the lock.

    PostgreSQL: a session advisory lock. SQLite: an exclusive lock on a file beside the
    database (a transaction cannot hold it: Alembic's SQLite table copies run outside one).
    """
    if engine.dialect.name == "postgresql":
        with first_connection(engine) as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            connection.commit()
            try:
                yield connection
            finally:
                connection.rollback()
                connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK_KEY}
                )
                connection.commit()
        return
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        with _memory_lock, engine.connect() as connection:
            yield connection
        return
    _require_sqlite_folder(engine)
    lock_path = Path(database).with_name(Path(database).name + ".migrate-lock")
    try:
        lock_file = lock_path.open("a")
    except OSError as exc:
        raise SchemaError(f"cannot open {lock_path} to change the schema: {exc.strerror}") from exc
    with lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            with first_connection(engine) as connection:
                # SQLite's recipe for changing a table that others refer to (a copy, then a
                # drop of the original): foreign keys off meanwhile. The pragma is a no-op
                # inside a transaction, so it comes first, and is restored on the pooled
                # connection after.
                connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
                try:
                    yield connection
                finally:
                    connection.rollback()
                    connection.exec_driver_sql("PRAGMA foreign_keys=ON")
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def upgrade_schema(engine: Engine, revision: str = "head") -> list[str]:
    """Bring the database to `revision` (adopting one made before migrations first); the only
    place the schema changes. Returns a line for each thing done."""
    done: list[str] = []
    with schema_lock(engine) as connection:
        config = alembic_config(connection)
        before = MigrationContext.configure(connection).get_current_revision()
        if before is None and _has_store_tables(connection):
            done += adopt_unversioned(connection)
            before = baseline_revision()
        try:
            command.upgrade(config, revision)
        except CommandError as exc:  # an unknown revision, several heads
            raise SchemaError(str(exc)) from exc
        after = MigrationContext.configure(connection).get_current_revision()
        connection.commit()
    if before == after:
        done.append(f"already at {after}")
    else:
        done.append(f"upgraded {before or 'an empty database'} -> {after}")
    return done


def downgrade_schema(engine: Engine, revision: str) -> list[str]:
    with schema_lock(engine) as connection:
        before = MigrationContext.configure(connection).get_current_revision()
        if before is None:
            raise SchemaError(f"the database has no revision to go back from: {UPGRADE_HINT}")
        try:
            command.downgrade(alembic_config(connection), revision)
        except CommandError as exc:
            raise SchemaError(str(exc)) from exc
        after = MigrationContext.configure(connection).get_current_revision()
        connection.commit()
    return [f"downgraded {before} -> {after or 'an empty database'}"]


def create_schema(engine: Engine) -> None:
    """A database at head for tests and benchmarks: an empty one is made from the models and
    stamped (quick); any other goes through the revisions. Processes use
    require_current_schema instead."""
    with schema_lock(engine) as connection:
        context = MigrationContext.configure(connection)
        empty = context.get_current_revision() is None and not _has_store_tables(connection)
        if empty:
            SQLModel.metadata.create_all(connection)
            context.stamp(_scripts(), "head")
            connection.commit()
    if not empty:
        upgrade_schema(engine)


def adopt_unversioned(connection: Connection) -> list[str]:
    """Adopt a database made before migrations: bring an older shape (no lease/retry columns,
    the old delivery indexes, item foreign keys) to the baseline, then stamp the baseline.

    The differences are all checked first: a database whose tables differ from the baseline in
    any other way is refused and left as it was.
    """
    target = baseline.baseline_metadata()
    differences = adopt.differences(connection, target)
    unknown = [diff for diff in differences if not adopt.adoptable(diff)]
    if unknown:
        raise SchemaError(
            "the database was made before migrations, but its tables are not a shape digest "
            f"made ({'; '.join(map(adopt.describe, unknown[:3]))}): nothing was changed"
        )
    done = adopt.bring_to_baseline(connection, differences)
    remaining = adopt.differences(connection, target)
    if remaining:
        raise SchemaError(
            "adopting the database left differences from the baseline "
            f"({'; '.join(map(adopt.describe, remaining[:3]))})"
        )
    MigrationContext.configure(connection).stamp(_scripts(), baseline_revision())
    done.append(f"adopted a database made before migrations as {baseline_revision()}")
    return done


def new_revision(message: str) -> Path:
    """Write an autogenerated revision into digest/migrations/versions/: the models compared
    with a scratch SQLite database built by the revisions so far. Read it before committing:
    autogenerate misses renames and PostgreSQL-only options (e.g. fillfactor)."""
    with tempfile.TemporaryDirectory() as folder:
        engine = make_engine(f"sqlite:///{Path(folder) / 'scratch.db'}")
        try:
            upgrade_schema(engine)
            config = alembic_config()
            if importlib.util.find_spec("ruff") is not None:
                # Written in the project's style: sorted imports, formatted.
                config.set_section_option("post_write_hooks", "hooks", "ruff_fix, ruff_format")
                for hook, options in (
                    ("ruff_fix", "check --fix --quiet"),
                    ("ruff_format", "format"),
                ):
                    config.set_section_option("post_write_hooks", f"{hook}.type", "module")
                    config.set_section_option("post_write_hooks", f"{hook}.module", "ruff")
                    config.set_section_option(
                        "post_write_hooks", f"{hook}.options", f"{options} REVISION_SCRIPT_FILENAME"
                    )
            with engine.connect() as connection:
                config.attributes["connection"] = connection
                script = command.revision(config, message=message, autogenerate=True)
        finally:
            engine.dispose()
    assert script is not None and not isinstance(script, list)
    return Path(script.path)
