"""Adopting a database made before migrations: what differs from the baseline
(digest.migrations.baseline), whether digest ever made that shape, and the changes that bring
it to the baseline. digest.db decides, under its schema lock, and stamps the baseline after.
"""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection

from digest.migrations import baseline


def differences(connection: Connection, metadata: MetaData) -> list[tuple[Any, ...]]:
    """What Alembic's autogenerate would change to make the database match `metadata`, one
    tuple per change; tables `metadata` does not name are ignored."""

    def ours(name: str | None, type_: str, _parents: Any) -> bool:
        return type_ != "table" or name in metadata.tables

    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "include_name": ours}
    )
    found: list[tuple[Any, ...]] = []
    for diff in compare_metadata(context, metadata):
        # Column changes come as a list of tuples; the rest one tuple each.
        found.extend(diff if isinstance(diff, list) else [diff])
    return found


def adoptable(diff: tuple[Any, ...]) -> bool:
    kind = diff[0]
    if kind == "add_table":
        return True
    if kind == "add_column":
        return (diff[2], diff[3].name) in baseline.LATER_COLUMNS
    if kind == "remove_index":
        return diff[1].name in baseline.OLD_INDEXES
    if kind == "remove_fk":
        return diff[1].table.name in baseline.OLD_FOREIGN_KEY_TABLES
    return False


def describe(diff: tuple[Any, ...]) -> str:
    """A difference in a few words: 'remove_index ix_odd on subscriber'."""
    kind, item = diff[0], diff[1]
    if kind.endswith("_table"):
        return f"{kind} {item.name}"
    if kind.endswith(("_index", "_constraint")):
        return f"{kind} {item.name} on {item.table.name}"
    if kind.endswith("_fk"):
        columns = ", ".join(c.name for c in item.columns)
        return f"{kind} {item.table.name} ({columns}) -> {item.referred_table.name}"
    # add_column/remove_column (schema, table, column) and modify_* (schema, table, column, ...)
    column = diff[3] if isinstance(diff[3], str) else diff[3].name
    return f"{kind} {diff[2]}.{column}"


def bring_to_baseline(connection: Connection, differences: list[tuple[Any, ...]]) -> list[str]:
    """Make the `differences` from the baseline (each checked adoptable by the caller first):
    drop the old indexes and foreign keys, add the later columns and tables. A line for each
    thing done."""
    target = baseline.baseline_metadata()
    operations = Operations(MigrationContext.configure(connection))
    done: list[str] = []
    for diff in differences:
        if diff[0] == "remove_index":
            operations.drop_index(diff[1].name, table_name=diff[1].table.name)
            done.append(f"dropped index {diff[1].name}")
        elif diff[0] == "add_column":
            operations.add_column(diff[2], diff[3].copy())
            done.append(f"added column {diff[2]}.{diff[3].name}")
        elif diff[0] == "add_table":
            diff[1].create(connection)
            done.append(f"created table {diff[1].name}")
    dropped_keys = [diff[1] for diff in differences if diff[0] == "remove_fk"]
    for table_name in sorted({key.table.name for key in dropped_keys}):
        if connection.dialect.name == "sqlite":
            # SQLite cannot drop a constraint: copy the table into the baseline's definition.
            with operations.batch_alter_table(
                table_name, copy_from=target.tables[table_name], recreate="always"
            ):
                pass
        else:
            for key in dropped_keys:
                if key.table.name == table_name:
                    operations.drop_constraint(key.name, table_name, type_="foreignkey")
        done.append(f"dropped the foreign keys of {table_name}")
    if connection.dialect.name == "postgresql":
        options = connection.execute(
            text("SELECT reloptions FROM pg_class WHERE oid = 'delivery'::regclass")
        ).scalar_one()
        wanted = f"fillfactor={baseline.DELIVERY_FILLFACTOR}"
        if wanted not in (options or []):
            connection.execute(text(f"ALTER TABLE delivery SET ({wanted})"))
            done.append(f"delivery pages filled to {baseline.DELIVERY_FILLFACTOR} % from now on")
    return done
