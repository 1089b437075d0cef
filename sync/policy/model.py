"""The policy as the data path uses it: immutable, resolved, already validated."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sync.db.catalog import BASE_COLUMN, SYSTEM_COLUMNS, VERSION_SUFFIX, Schema, TableInfo
from sync.errors import PolicyError
from sync.policy.rowfilter import RowFilter


@dataclass(frozen=True)
class TableRule:
    """What of one table may leave its region, and to where."""

    table: str
    columns: tuple[str, ...]              # allow-listed business columns
    rows: RowFilter | None
    to: tuple[str, ...]                   # region names or glob patterns ("eu-*"); "*" = all
    file: str
    line: int
    description: str | None = None
    loc: tuple = ()                        # key path in its file, e.g. ("rules", "contact", 1)
    groups: tuple[tuple[str, ...], ...] = ()   # the table's column groups (merge as one unit)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def sends_to(self, region: str) -> bool:
        return any(fnmatch.fnmatchcase(region, pattern) for pattern in self.to)

    def may_overlap(self, other: TableRule) -> bool:
        """Could one region match both rules? (Exact for names; for patterns, when either
        pattern matches the other's text.)"""
        return any(a == b or fnmatch.fnmatchcase(a, b) or fnmatch.fnmatchcase(b, a)
                   for a in self.to for b in other.to)

    def wire_columns(self, info: TableInfo) -> tuple[str, ...]:
        """Columns that travel, in table order: key, allow-list, system columns."""
        allowed = {info.pk, *self.columns, *SYSTEM_COLUMNS}
        return tuple(c for c in info.columns if c in allowed)

    def version_columns(self, info: TableInfo) -> tuple[str, ...]:
        """The version data that travels with the sent columns: their version columns and
        the row's base version; nothing of a column this rule does not send."""
        if not info.per_column:
            return ()
        sent = set(self.columns)
        return (*(c + VERSION_SUFFIX for c in info.versioned if c in sent), BASE_COLUMN)

    def granted_columns(self, info: TableInfo) -> tuple[str, ...]:
        """What the owner grants its destination role: the wire and its versions, but not
        the row's own ``modifiedon``/``sync_origin`` where versions are per column — an
        edit of a column that never leaves changes them, so the reader derives both from
        the versions it may read."""
        wire = self.wire_columns(info)
        if info.per_column:
            wire = tuple(c for c in wire if c not in ("modifiedon", "sync_origin"))
        return (*wire, *self.version_columns(info))


@dataclass(frozen=True)
class Policy:
    rules: Mapping[str, tuple[TableRule, ...]]      # table -> its rules (disjoint `to`)
    classification: Mapping[str, frozenset[str]]   # "table.column" or "table.*" -> tags
    never_leaves_region: frozenset[str]
    sha: str
    files: tuple[str, ...] = field(default=())
    column_groups: Mapping[str, tuple[tuple[str, ...], ...]] = field(default_factory=dict)
    # declared business keys (each must be a unique index; every unique index is one)
    alternate_keys: Mapping[str, tuple[tuple[str, ...], ...]] = field(default_factory=dict)

    def all_rules(self) -> Iterable[TableRule]:
        for rules in self.rules.values():
            yield from rules

    def rule_for(self, table: str, destination: str) -> TableRule | None:
        """The one rule that sends ``table`` to ``destination``, or None (stays home)."""
        matching = [r for r in self.rules.get(table, ()) if r.sends_to(destination)]
        if len(matching) > 1:
            a, b = matching[:2]
            raise PolicyError(f"two rules send table {table!r} to region {destination!r}: "
                              f"{a.where} and {b.where}; give each region one rule",
                              file=b.file, line=b.line, key=f"rules.{table}")
        return matching[0] if matching else None

    def rules_to(self, destination: str) -> dict[str, TableRule]:
        """The tables (with their rules) that may be sent to ``destination``."""
        out = {}
        for table in self.rules:
            rule = self.rule_for(table, destination)
            if rule is not None:
                out[table] = rule
        return out

    def tags(self, table: str, column: str) -> frozenset[str]:
        return (self.classification.get(f"{table}.{column}", frozenset())
                | self.classification.get(f"{table}.*", frozenset()))

    def unclassified(self, schema: Schema) -> list[str]:
        """Columns in the database that no rule sends and no classification mentions."""
        out = []
        for name, info in schema.tables.items():
            rules = self.rules.get(name, ())
            sent = {c for r in rules for c in r.wire_columns(info)}
            for col in info.columns:
                if col in sent or col == "versionnumber" or self.tags(name, col):
                    continue
                if not rules and col in (info.pk, *SYSTEM_COLUMNS):
                    continue
                out.append(f"{name}.{col}")
        return out
