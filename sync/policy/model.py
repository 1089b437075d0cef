"""The policy as the data path uses it: immutable, resolved, already validated."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..schema import SYSTEM_COLUMNS, Schema, TableInfo
from .rowfilter import RowFilter


@dataclass(frozen=True)
class TableRule:
    """What of one table may leave its region, and to where."""

    table: str
    columns: tuple[str, ...]              # allow-listed business columns
    rows: RowFilter | None
    to: tuple[str, ...]                   # region names or glob patterns ("eu-*"); "*" = all
    file: str
    line: int

    def sends_to(self, region: str) -> bool:
        return any(fnmatch.fnmatchcase(region, pattern) for pattern in self.to)

    def wire_columns(self, info: TableInfo) -> tuple[str, ...]:
        """Columns that travel, in table order: key, allow-list, system columns."""
        allowed = {info.pk, *self.columns, *SYSTEM_COLUMNS}
        return tuple(c for c in info.columns if c in allowed)


@dataclass(frozen=True)
class Policy:
    rules: Mapping[str, TableRule]
    classification: Mapping[str, frozenset[str]]   # "table.column" or "table.*" -> tags
    never_leaves_region: frozenset[str]
    sha: str
    files: tuple[str, ...] = field(default=())

    def rules_to(self, destination: str) -> dict[str, TableRule]:
        """The tables (with their rules) that may be sent to ``destination``."""
        return {t: r for t, r in self.rules.items() if r.sends_to(destination)}

    def tags(self, table: str, column: str) -> frozenset[str]:
        return (self.classification.get(f"{table}.{column}", frozenset())
                | self.classification.get(f"{table}.*", frozenset()))

    def unclassified(self, schema: Schema) -> list[str]:
        """Columns in the database that no rule sends and no classification mentions."""
        out = []
        for name, info in schema.tables.items():
            rule = self.rules.get(name)
            sent = set(rule.wire_columns(info)) if rule else set()
            for col in info.columns:
                if col in sent or col == "versionnumber" or self.tags(name, col):
                    continue
                if rule is None and col in (info.pk, *SYSTEM_COLUMNS):
                    continue
                out.append(f"{name}.{col}")
        return out
