"""Schema migrations: the revisions agree with the models, databases made before migrations
are adopted with every row kept, upgrades from processes starting together take turns, and a
database that is not current stops every entry point with one line."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, inspect, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, select
from sqlmodel.sql.sqltypes import AutoString

from digest import db
from digest.migrations import adopt, baseline
from digest.models import Delivery, Subscriber, UTCDateTime
from digest.tokens import Purpose, make_token
from tests.conftest import POSTGRES_ADMIN_URL, REQUIRE_SERVICES, SECRET
from tests.factories import NOW

ROOT = Path(__file__).resolve().parent.parent
OLD_MODELS = ROOT / "tests" / "fixtures" / "old_models"
DIGEST = str(Path(sys.executable).parent / "digest")
# The shapes create_schema made before migrations, oldest first: without lease_until and
# retry_at; with them and their old indexes; delivery updated in place (items without foreign
# keys); and 0bca3dd, the baseline.
OLD_SHAPES = ["df69cb9", "5d82650", "9205999", "0bca3dd"]


# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a database of its own, empty: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    yield from _new_postgres_database()


def _new_postgres_database() -> Iterator[str]:
    if not POSTGRES_ADMIN_URL:
        if REQUIRE_SERVICES:
            pytest.fail("DIGEST_TEST_POSTGRES_URL must be set when services are required")
        pytest.skip("PostgreSQL not configured (set DIGEST_TEST_POSTGRES_URL)")
    import psycopg

    admin = POSTGRES_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    name = f"digest_migrate_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{admin.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# Run in a process of its own with the models.py of an old commit (and nothing of today's
# digest imported): that commit's create_schema, then a store with rows in every table.
MAKE_OLD_DATABASE = r"""
import datetime as dt, importlib.util, sys
from sqlalchemy import create_engine
from sqlmodel import Session, SQLModel

spec = importlib.util.spec_from_file_location("old_models", sys.argv[1])
m = sys.modules["old_models"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
url = sys.argv[2].replace("postgresql://", "postgresql+psycopg://")
engine = create_engine(url)
SQLModel.metadata.create_all(engine)  # create_schema, as every commit before migrations had it

t0 = dt.datetime(2026, 6, 1, 7, 0, tzinfo=dt.UTC)
later = {"lease_until": t0, "retry_at": t0 + dt.timedelta(hours=1)}
has_later = hasattr(m.Delivery, "retry_at")
with Session(engine) as s:
    for i in range(3):
        s.add(m.Paper(id=f"2606.0000{i}", title=f"Paper {i}", abstract="About diffusion.",
                      authors=["A. Author", "B. Author"], published=t0, first_seen=t0,
                      updated_at=t0, categories=["cs.LG"], upvotes=i, sources=["hf"]))
    for i, status in enumerate(["active", "unsubscribed", "pending"]):
        s.add(m.Subscriber(email=f"s{i}@example.com", status=status, topics=[f"topic {i}"],
                           exclude=["crypto"], timezone="Europe/Berlin", send_hour=6 + i,
                           bounce_count=i, created_at=t0, confirmed_at=t0))
    s.flush()
    states = ["sent", "failed", "skipped", "sending"]
    for i, state in enumerate(states):
        d = m.Delivery(subscriber_id=1 + i % 2, digest_date=dt.date(2026, 6, 1 + i), state=state,
                       reason=f"reason {i}", message_id=f"<m{i}@x>", attempts=i, created_at=t0,
                       updated_at=t0, sent_at=t0 if state == "sent" else None,
                       **(later if has_later and state == "sending" else {}))
        s.add(d)
    s.flush()
    for rank in range(3):
        s.add(m.DeliveryItem(delivery_id=1, paper_id=f"2606.0000{rank}", rank=rank + 1,
                             score=0.5 - rank / 10, why=f"matches 'topic {rank}'"))
    s.add(m.Feedback(subscriber_id=1, paper_id="2606.00000", value=1, created_at=t0))
    s.add(m.Feedback(subscriber_id=2, paper_id="2606.00001", value=-1, created_at=t0))
    s.add(m.Run(kind="send", started_at=t0, finished_at=t0, status="ok", summary={"sent": 1}))
    s.add(m.Run(kind="ingest", started_at=t0, status="running"))
    s.commit()
engine.dispose()
"""


def make_old_database(commit: str, url: str) -> None:
    subprocess.run(
        [sys.executable, "-c", MAKE_OLD_DATABASE, str(OLD_MODELS / f"models_{commit}.py"), url],
        check=True,
        timeout=120,
        cwd=OLD_MODELS,
    )


def rows(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """Every row of every baseline table, in primary-key order."""
    found = {}
    with engine.connect() as connection:
        for name, table in baseline.baseline_metadata().tables.items():
            order = ", ".join(c.name for c in table.primary_key.columns)
            result = connection.execute(text(f"SELECT * FROM {name} ORDER BY {order}"))
            found[name] = [dict(row._mapping) for row in result]
    return found


def cli(args: list[str], url: str, cwd: Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    env["DIGEST_DATABASE_URL"] = url
    return subprocess.run(
        [DIGEST, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120, **kwargs
    )


def differences_from_models(engine: Engine) -> list[Any]:
    with engine.connect() as connection:
        return adopt.differences(connection, SQLModel.metadata)


# --- the revisions and the models ------------------------------------------------------------


def test_the_revisions_form_one_line_from_the_baseline():
    """Revisions written in parallel must be put in one line (or merged) before they land."""
    scripts = db._scripts()
    assert len(scripts.get_heads()) == 1, "several heads: set one's down_revision to the other"
    assert db.baseline_revision() == "555dde076f85"
    assert db.head_revision() in {r.revision for r in scripts.walk_revisions()}


def test_the_models_and_the_revisions_at_head_agree(db_url):
    """A database built by the revisions is what the models describe: autogenerate finds no
    difference (so no model change lands without its revision). PostgreSQL table options,
    which autogenerate does not compare, are checked too."""
    engine = db.make_engine(db_url)
    try:
        assert db.upgrade_schema(engine) == [f"upgraded an empty database -> {db.head_revision()}"]
        assert differences_from_models(engine) == []
        assert db.schema_status(engine).current
        if engine.dialect.name == "postgresql":
            with engine.connect() as connection:
                for table in SQLModel.metadata.tables.values():
                    wanted = table.dialect_options["postgresql"]["with"] or {}
                    options = connection.execute(
                        text("SELECT reloptions FROM pg_class WHERE oid = CAST(:t AS regclass)"),
                        {"t": table.name},
                    ).scalar_one()
                    assert sorted(options or []) == sorted(f"{k}={v}" for k, v in wanted.items())
    finally:
        engine.dispose()


def test_the_test_helper_builds_the_same_database_as_the_revisions(db_url):
    engine = db.make_engine(db_url)
    try:
        db.create_schema(engine)
        assert db.schema_status(engine).current
        assert differences_from_models(engine) == []
        db.create_schema(engine)  # a second call finds it current
    finally:
        engine.dispose()


def test_downgrade_to_base_and_back(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    assert cli(["db", "upgrade"], url, tmp_path).returncode == 0
    result = cli(["db", "downgrade", "base", "--yes"], url, tmp_path)
    assert result.returncode == 0, result.stderr
    engine = db.make_engine(url)
    assert db.schema_status(engine).empty
    assert cli(["db", "upgrade"], url, tmp_path).returncode == 0
    assert db.schema_status(engine).current
    engine.dispose()


# --- databases made before migrations --------------------------------------------------------


@pytest.mark.parametrize("commit", OLD_SHAPES)
def test_a_database_made_before_migrations_upgrades_with_every_row_kept(
    commit, fresh_url, tmp_path
):
    make_old_database(commit, fresh_url)
    engine = db.make_engine(fresh_url)
    before = rows(engine)
    assert sum(map(len, before.values())) == 3 + 3 + 4 + 3 + 2 + 2

    # Refused until it is upgraded: one line naming the command.
    refused = cli(["subscribers", "list"], fresh_url, tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.strip().count("\n") == 0 and "digest db upgrade" in refused.stderr

    result = cli(["db", "upgrade"], fresh_url, tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"adopted a database made before migrations as {db.baseline_revision()}" in result.stdout
    if commit == "0bca3dd":
        # Today's shape is only stamped.
        assert result.stdout.splitlines()[0].startswith("adopted")

    assert db.schema_status(engine).current
    assert differences_from_models(engine) == []
    after = rows(engine)
    for name, old_rows in before.items():
        assert len(after[name]) == len(old_rows), name
        for old, new in zip(old_rows, after[name], strict=True):
            assert {k: new[k] for k in old} == old, name
            added = {k: new[k] for k in set(new) - set(old)}
            if name == "subscriber":
                # Live subscriptions keep the links already mailed (no key); ended ones do not.
                key = added.pop("link_key")
                assert key == "" if old["status"] != "unsubscribed" else len(key) == 12
            assert all(value is None for value in added.values()), name
    # The code works on it: the query that crashed with "no such column: delivery.retry_at".
    with Session(engine) as session:
        deliveries = session.exec(select(Delivery).order_by(Delivery.id)).all()
        assert [d.state for d in deliveries] == ["sent", "failed", "skipped", "sending"]
    listed = cli(["subscribers", "list"], fresh_url, tmp_path)
    assert listed.returncode == 0 and "s0@example.com" in listed.stdout
    if engine.dialect.name == "sqlite":
        # Ids are never reused from now on (issue 17): the table was copied with AUTOINCREMENT.
        with engine.connect() as connection:
            table_sql = connection.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE name = 'subscriber'"
            ).scalar_one()
            assert "AUTOINCREMENT" in table_sql
            assert connection.exec_driver_sql("PRAGMA foreign_key_check").all() == []
    engine.dispose()


def test_a_database_of_an_unknown_shape_is_refused_and_left_as_it_was(tmp_path):
    url = f"sqlite:///{tmp_path / 'odd.db'}"
    make_old_database("0bca3dd", url)
    engine = db.make_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE INDEX ix_odd ON subscriber (timezone)")
        connection.exec_driver_sql("ALTER TABLE paper DROP COLUMN comment")
    result = cli(["db", "upgrade"], url, tmp_path)
    assert result.returncode == 1
    assert "not a shape digest made" in result.stderr and "nothing was changed" in result.stderr
    assert "Traceback" not in result.stderr
    names = set(inspect(engine).get_table_names())
    assert "alembic_version" not in names
    assert "ix_odd" in {i["name"] for i in inspect(engine).get_indexes("subscriber")}
    engine.dispose()


# --- entry points refuse a database that is not current -------------------------------------


def test_a_database_not_at_the_code_revision_stops_the_cli_with_one_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    engine = db.make_engine(url)
    db.create_schema(engine)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'f00dfeedbeef'"))
    engine.dispose()
    for args in (["subscribers", "list"], ["send", "--dry-run"], ["db", "current"]):
        result = cli(args, url, tmp_path)
        assert result.returncode == 1, args
        lines = (result.stdout + result.stderr).strip().splitlines()
        assert len(lines) == 1, lines
        assert "f00dfeedbeef" in lines[0] and "does not know" in lines[0]


def test_an_empty_database_is_created_at_the_first_start(tmp_path):
    url = f"sqlite:///{tmp_path / 'new.db'}"
    assert cli(["subscribers", "list"], url, tmp_path).returncode == 0
    engine = db.make_engine(url)
    assert db.schema_status(engine).current
    engine.dispose()


def test_demo_upgrades_its_own_database(tmp_path):
    make_old_database("df69cb9", f"sqlite:///{tmp_path / 'digest.db'}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    result = subprocess.run(
        [DIGEST, "demo"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 1


def test_the_web_app_refuses_a_database_made_before_migrations(tmp_path):
    from tests.conftest import make_settings

    make_old_database("0bca3dd", f"sqlite:///{tmp_path / 'digest.db'}")
    from digest.web import create_app

    with pytest.raises(db.SchemaError, match="run `digest db upgrade`"):
        create_app(make_settings(tmp_path))


@pytest.mark.integration
@pytest.mark.parametrize("command", ["worker", "beat"])
def test_the_worker_and_beat_refuse_a_database_made_before_migrations(command, tmp_path):
    url = f"sqlite:///{tmp_path / 'digest.db'}"
    make_old_database("0bca3dd", url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    env.update(DIGEST_DATABASE_URL=url, DIGEST_TASK_QUEUE=f"digest-test-{uuid.uuid4().hex[:8]}")
    extra = ["--pool=solo"] if command == "worker" else ["-s", str(tmp_path / "beat-schedule")]
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "workers", command, *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "the database was made before migrations: run `digest db upgrade`" in result.stderr
    assert "Traceback" not in result.stderr


# --- one place, one lock ---------------------------------------------------------------------

# Imports first (slow, uneven), then waits for the go file so the processes really race.
RACE = r"""
import pathlib, sys, time
from digest import db
engine = db.make_engine(sys.argv[1])
print("ready", flush=True)
go = pathlib.Path(sys.argv[2])
while not go.exists():
    time.sleep(0.002)
if sys.argv[3] == "upgrade":
    db.upgrade_schema(engine)
else:
    db.require_current_schema(engine)
"""


def race(url: str, folder: Path, kinds: list[str]) -> list[subprocess.CompletedProcess[str]]:
    go = folder / f"go-{uuid.uuid4().hex[:6]}"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", RACE, url, str(go), kind],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for kind in kinds
    ]
    for process in processes:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
    go.touch()
    results = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return results


@pytest.mark.integration
def test_processes_starting_together_on_a_fresh_postgresql_database_never_fail(tmp_path):
    """Three processes (two upgrades, one web/worker start) on a fresh database, three times:
    before the lock, create_all raced and failed 9 times in 18 (pg_type unique violation)."""
    for _ in range(3):
        for url in _new_postgres_database():
            results = race(url, tmp_path, ["upgrade", "upgrade", "start"])
            for result in results:
                assert result.returncode == 0, result.stderr
            engine = db.make_engine(url)
            assert db.schema_status(engine).current
            assert differences_from_models(engine) == []
            engine.dispose()


@pytest.mark.integration
def test_processes_starting_together_on_a_fresh_sqlite_database_never_fail(tmp_path):
    for i in range(3):
        url = f"sqlite:///{tmp_path / f'race{i}.db'}"
        for result in race(url, tmp_path, ["upgrade", "start", "start"]):
            assert result.returncode == 0, result.stderr
        engine = db.make_engine(url)
        assert db.schema_status(engine).current
        engine.dispose()


# --- link keys (issue 17) --------------------------------------------------------------------

LINK_KEYS = "63bf4fa1fcb4"


def before_link_keys() -> str:
    revision = db._scripts().get_revision(LINK_KEYS).down_revision
    assert isinstance(revision, str)
    return revision


def store_before_link_keys(url: str) -> tuple[Engine, dict[str, int], dict[str, str]]:
    """A store at the revision before link keys, with subscribers of every status, and the
    links the code of then mailed them (no key in them): the ids and the tokens by name."""
    engine = db.make_engine(url)
    db.upgrade_schema(engine, before_link_keys())
    table = Table("subscriber", MetaData(), autoload_with=engine)
    sqlite = engine.dialect.name == "sqlite"

    def when(moment: dt.datetime) -> dt.datetime:
        return moment.replace(tzinfo=None) if sqlite else moment

    t0 = dt.datetime(2026, 6, 1, 7, 0, tzinfo=dt.UTC)
    ids: dict[str, int] = {}
    with engine.begin() as connection:
        for name in ("active", "unsubscribed", "pending", "suppressed", "old owner", "last"):
            ids[name] = connection.execute(
                table.insert().values(
                    email=f"{name.replace(' ', '-')}@example.com",
                    status=name if name not in ("old owner", "last") else "active",
                    topics=[f"{name} topic"],
                    exclude=[],
                    frequency="daily",
                    weekly_day=0,
                    send_hour=7,
                    timezone="UTC",
                    bounce_count=0,
                    created_at=when(t0),
                    confirmed_at=None if name == "pending" else when(t0),
                )
            ).inserted_primary_key[0]
    legacy = {
        f"{name} {purpose.value}": make_token(SECRET, purpose, {"s": ids[name]})
        for name in ids
        for purpose in (Purpose.UNSUBSCRIBE, Purpose.PREFERENCES, Purpose.FEEDBACK)
    }
    for name in ("active", "unsubscribed", "pending"):
        payload = {"s": ids[name], "topics": [f"{name} confirmed"], "exclude": [], "schedule": {}}
        legacy[f"{name} confirm"] = make_token(SECRET, Purpose.CONFIRM, payload)
    legacy["active view"] = make_token(
        SECRET, Purpose.VIEW, {"s": ids["active"], "d": "2026-06-01"}
    )
    with engine.begin() as connection:
        # The old owner was removed, and SQLite (before AUTOINCREMENT) gave the id to a newcomer
        # who signed up after those links were mailed; the highest id was removed too.
        connection.execute(table.delete().where(table.c.id.in_([ids["old owner"], ids["last"]])))
        later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
        connection.execute(
            table.insert().values(
                id=ids["old owner"],
                email="newcomer@example.com",
                status="active",
                topics=["mine"],
                exclude=[],
                frequency="daily",
                weekly_day=0,
                send_hour=7,
                timezone="UTC",
                bounce_count=0,
                created_at=when(later),
                confirmed_at=when(later),
            )
        )
    return engine, ids, legacy


def test_link_keys_keep_the_links_mailed_to_live_subscriptions_and_end_the_others(
    fresh_url, tmp_path
):
    """Upgraded, every row is kept; the links already mailed keep working where the
    subscription is still the one they were made for (active, suppressed, a pending
    confirmation, once), and act on nothing where it has ended (unsubscribed) or where the
    id now belongs to someone else."""
    from digest.links import read_link
    from digest.web import create_app
    from tests.conftest import make_settings
    from tests.test_hostile_links import CollectingMailer, one_click, post_form

    engine, ids, legacy = store_before_link_keys(fresh_url)
    before = rows(engine)["subscriber"]
    assert db.upgrade_schema(engine)
    assert db.schema_status(engine).current and differences_from_models(engine) == []
    after = rows(engine)["subscriber"]
    assert [{k: new[k] for k in old} for old, new in zip(before, after, strict=True)] == before
    # Live subscriptions keep the key their mailed links read as; the ended one gets its own.
    keys = {r["email"]: r["link_key"] for r in after}
    assert len(keys.pop("unsubscribed@example.com")) == 12 and set(keys.values()) == {""}
    assert all(r["confirm_key"] is None for r in after)

    settings = make_settings(tmp_path, database_url=fresh_url)
    client = create_app(
        settings, engine=engine, mailer=CollectingMailer(), clock=lambda: NOW
    ).test_client()

    def status(name: str) -> tuple[str, list[str]]:
        with Session(engine) as session:
            s = session.get(Subscriber, ids[name])
            return s.status, s.topics

    with Session(engine) as session:
        for name, purpose in (
            ("active view", Purpose.VIEW),
            ("active feedback", Purpose.FEEDBACK),
            ("suppressed preferences", Purpose.PREFERENCES),
        ):
            target = read_link(
                session=session, secret_key=SECRET, purpose=purpose, token=legacy[name]
            )
            assert target.current, name
    assert client.get(f"/preferences/{legacy['active preferences']}").status_code == 200
    # A confirmation mailed to a subscribed address does not revert its topics.
    assert post_form(client, f"/confirm/{legacy['active confirm']}").status_code == 200
    assert status("active") == ("active", ["active topic"])
    # The pending address confirms with its link, once.
    assert post_form(client, f"/confirm/{legacy['pending confirm']}").status_code == 200
    assert status("pending") == ("active", ["pending confirmed"])
    r = post_form(client, f"/confirm/{legacy['pending confirm']}")
    assert r.status_code == 200 and "Already subscribed" in r.get_data(as_text=True)
    # The ended subscription is not brought back, and says it is unsubscribed.
    assert post_form(client, f"/confirm/{legacy['unsubscribed confirm']}").status_code == 410
    assert (
        one_click(client, f"/unsubscribe/{legacy['unsubscribed unsubscribe']}").status_code == 200
    )
    assert status("unsubscribed") == ("unsubscribed", ["unsubscribed topic"])
    # The newcomer given a removed subscriber's id is not unsubscribed by that one's link.
    assert one_click(client, f"/unsubscribe/{legacy['old owner unsubscribe']}").status_code == 410
    assert status("old owner") == ("active", ["mine"])
    # Live subscriptions' mailed unsubscribe links work (and a second click is friendly).
    for name in ("active", "suppressed"):
        assert one_click(client, f"/unsubscribe/{legacy[name + ' unsubscribe']}").status_code == 200
        assert status(name)[0] == "unsubscribed"
        again = one_click(client, f"/unsubscribe/{legacy[name + ' unsubscribe']}")
        assert again.status_code == 200 and "is unsubscribed" in again.get_data(as_text=True)
    assert post_form(client, f"/confirm/{legacy['active confirm']}").status_code == 410
    assert status("active") == ("unsubscribed", ["active topic"])

    if engine.dialect.name == "sqlite":
        with engine.connect() as connection:
            table_sql = connection.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE name = 'subscriber'"
            ).scalar_one()
            assert "AUTOINCREMENT" in table_sql
    # The removed highest id is never given again, after the table's copy either way.
    assert db.downgrade_schema(engine, before_link_keys()) and db.upgrade_schema(engine)
    with Session(engine) as session:
        newest = Subscriber(email="after@example.com", topics=["x"], created_at=NOW)
        session.add(newest)
        session.commit()
        assert newest.id == ids["last"] + 1
    engine.dispose()


# --- adding a revision -----------------------------------------------------------------------


def test_a_new_revision_is_autogenerated_from_the_models(tmp_path, monkeypatch):
    """`digest db revision -m` writes a revision with plain SQLAlchemy types; a database at the
    old head is then behind (one line), and upgrades."""
    migrations = tmp_path / "migrations"
    shutil.copytree(db.MIGRATIONS_DIR, migrations, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(db, "MIGRATIONS_DIR", migrations)
    db._scripts.cache_clear()
    url = f"sqlite:///{tmp_path / 'store.db'}"
    engine = db.make_engine(url)
    db.upgrade_schema(engine)
    old_head = db.head_revision()
    note = Table(
        "scratch_note",
        SQLModel.metadata,
        Column("id", Integer(), primary_key=True),
        Column("title", AutoString(20), nullable=False),
        Column("noted_at", UTCDateTime(), nullable=False),
    )
    try:
        path = db.new_revision("add scratch note")
        db._scripts.cache_clear()
        source = path.read_text()
        assert path.parent == migrations / "versions"
        assert f'down_revision: str | Sequence[str] | None = "{old_head}"' in source
        assert "sa.String(length=20)" in source and "sa.DateTime(timezone=True)" in source
        assert "sqlmodel" not in source and "digest.models" not in source
        with pytest.raises(db.SchemaError, match=r"behind the code's .*: run `digest db upgrade`"):
            db.require_current_schema(engine)
        assert db.upgrade_schema(engine) == [f"upgraded {old_head} -> {db.head_revision()}"]
        assert "scratch_note" in inspect(engine).get_table_names()
        assert differences_from_models(engine) == []
        lint = subprocess.run(
            [sys.executable, "-m", "ruff", "check", "--config", str(ROOT / "pyproject.toml"), path],
            capture_output=True,
            text=True,
        )
        assert lint.returncode == 0, lint.stdout
    finally:
        SQLModel.metadata.remove(note)
        engine.dispose()
        db._scripts.cache_clear()


class _LockedTwice:
    """A cursor whose WAL switch loses twice to another process, as SQLite reports it."""

    def __init__(self, error: str = "database is locked") -> None:
        self.tries = 0
        self.error = error

    def execute(self, sql: str) -> _LockedTwice:
        if sql == "PRAGMA journal_mode=WAL":
            self.tries += 1
            if self.tries <= 2:
                raise sqlite3.OperationalError(self.error)
        self.sql = sql
        return self

    def fetchone(self) -> tuple[str]:
        return ("wal" if self.sql == "PRAGMA journal_mode=WAL" else "delete",)


def test_a_process_losing_the_switch_to_wal_tries_again_instead_of_failing():
    """CI saw it 1 time in 9 processes: three starting on a fresh file, one told at once
    "database is locked" (SQLite does not wait its busy timeout for the journal switch)."""
    cursor = _LockedTwice()
    db._use_wal(cursor)
    assert cursor.tries == 3


def test_other_errors_of_the_switch_to_wal_are_not_swallowed():
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        db._use_wal(_LockedTwice("disk I/O error"))
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        db._use_wal(_LockedTwice(), patience=-1)


def test_a_process_starting_while_another_migrates_sqlite_waits_for_it(tmp_path):
    """SQLite's DDL is not transactional: mid-upgrade, a starting process saw tables without
    their revision and refused the database as made before migrations (CI, 1 in 9 starts). It
    now looks again once the migrating process lets go of the schema lock."""
    import threading

    from alembic import command

    url = f"sqlite:///{tmp_path / 'digest.db'}"
    migrating, starting = db.make_engine(url), db.make_engine(url)
    outcome: list[BaseException | None] = []

    def start() -> None:
        try:
            db.require_current_schema(starting)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 (the assertion says which)
            outcome.append(exc)

    with db.schema_lock(migrating) as connection:
        # What another process's upgrade has written so far: a table, no revision yet.
        connection.exec_driver_sql("CREATE TABLE paper (id VARCHAR PRIMARY KEY)")
        connection.commit()
        other = threading.Thread(target=start)
        other.start()
        other.join(1.0)
        assert other.is_alive() and outcome == []  # waiting for the lock, not refusing
        connection.exec_driver_sql("DROP TABLE paper")
        command.upgrade(db.alembic_config(connection), "head")
        connection.commit()
    other.join(30)
    assert outcome == [None]
    assert db.schema_status(starting).current
    migrating.dispose()
    starting.dispose()
