"""What the owner's COPY sends as a per-column table's row time and origin (migration
0018): derived from the versions the destination is sent, never the row's own
``modifiedon``, which an edit of a column the destination may not read would move
(invariant 1 covers inference). Versions are numbers (migration 0021, sync/versions.py):
the time is their high bits, the origin's name comes from the registry both sides share
(``names``). Shared by the reader and the read-back helpers."""

from __future__ import annotations

from collections.abc import Mapping

from psycopg import sql

from sync import versions
from sync.db.catalog import TableInfo
from sync.policy.model import TableRule


def row_version(info: TableInfo, rule: TableRule) -> sql.Composable:
    """The newest version among what the destination reads of a row (its base and the
    versions of the columns it is sent): a destination's ``modifiedon`` and
    ``sync_origin``, which no edit of a column it may not read can move."""
    return sql.SQL("greatest({})").format(sql.SQL(", ").join(
        sql.Identifier("t", c) for c in rule.version_columns(info)))


def row_origin(info: TableInfo, rule: TableRule, names: Mapping[int, str]) -> sql.Composable:
    if not info.per_column:
        return sql.SQL("t.sync_origin")
    return versions.name_sql(row_version(info, rule), names)


def wire_value(info: TableInfo, rule: TableRule, column: str,
               names: Mapping[int, str]) -> sql.Composable:
    """What the COPY sends as ``column``: the column itself, except a per-column table's
    row time and origin, derived from the versions sent (see ``row_version``)."""
    if info.per_column and column == "modifiedon":
        return versions.time_sql(row_version(info, rule))
    if info.per_column and column == "sync_origin":
        return row_origin(info, rule, names)
    return sql.Identifier("t", column)


__all__ = ["row_origin", "row_version", "wire_value"]
