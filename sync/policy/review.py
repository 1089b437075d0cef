"""Reading a policy the way a reviewer does: explain, diff, why, and structural warnings.

Pure functions over ``Policy`` and ``Schema``; the CLI prints what they return.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deepdiff import DeepDiff

from sync.db.catalog import SYSTEM_COLUMNS, Schema
from sync.policy.model import Policy

OTHER = "*"   # stands for "any region not named": matched only by rules sent to "*"


def regions_named(*policies: Policy) -> list[str]:
    """Region names written literally in ``to`` lists (patterns left out)."""
    names = {p for pol in policies for r in pol.all_rules() for p in r.to
             if not any(ch in p for ch in "*?[")}
    return sorted(names)


def stand_in(pattern: str) -> str:
    """A region name that a ``to`` pattern such as ``eu-*`` matches and no literal name
    does: it stands for "the regions matching eu-*" in a diff."""
    return pattern.replace("*", "(any)").replace("?", "(one)")


def universe(regions: list[str] | None, *policies: Policy) -> list[str]:
    """The regions a diff compares: those given, else every region named, one stand-in
    per pattern (so a change for ``eu-*`` is not hidden), and every other region."""
    if regions:
        return sorted(set(regions))
    patterns = {p for pol in policies for r in pol.all_rules() for p in r.to
                if p != "*" and any(ch in p for ch in "*?[")}
    return [*regions_named(*policies), *sorted(stand_in(p) for p in patterns), OTHER]


def _shown(region: str) -> str:
    if region == OTHER:
        return "other regions"
    if "(any)" in region or "(one)" in region:
        return "regions matching " + region.replace("(any)", "*").replace("(one)", "?")
    return region


# -- explain ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ColumnLine:
    column: str
    tags: tuple[str, ...]
    regions: tuple[str, ...]       # where it goes
    why: str                       # rule location, or why it stays home


def explain(policy: Policy, schema: Schema | None, table: str,
            regions: list[str]) -> tuple[list[ColumnLine], list[str]]:
    """Per column: which regions receive it and under which rule; plus the row filters."""
    info = schema.tables.get(table) if schema else None
    rules = policy.rules.get(table, ())
    if info is not None:
        columns = list(info.columns)
    else:
        named = {c for r in rules for c in r.columns}
        named |= {k.split(".", 1)[1] for k in policy.classification if k.startswith(table + ".")}
        columns = [f"{table}id", *sorted(named - {"*"}), *SYSTEM_COLUMNS]
    lines = []
    for column in columns:
        tags = tuple(sorted(policy.tags(table, column)))
        goes, where = [], set()
        for region in regions:
            rule = policy.rule_for(table, region)
            if rule and (column in rule.columns or column in (f"{table}id", *SYSTEM_COLUMNS)):
                goes.append(region)
                where.add(rule.where)
        if goes:
            why = "rule " + ", ".join(sorted(where))
        elif set(tags) & policy.never_leaves_region:
            blocked = sorted(set(tags) & policy.never_leaves_region)
            why = f"never leaves its region ({', '.join(blocked)})"
        elif column == "versionnumber":
            why = "assigned by each region"
        elif not rules:
            why = "no rule for this table: region-local"
        else:
            why = "not on the allow-list"
        lines.append(ColumnLine(column, tags, tuple(goes), why))
    filters = []
    for rule in rules:
        dest = "every region" if rule.to == ("*",) else ", ".join(rule.to)
        if rule.rows:
            filters.append(f"to {dest} ({rule.where}): only rows where {rule.rows.describe()}")
        else:
            filters.append(f"to {dest} ({rule.where}): every row")
    return lines, filters


# -- diff ---------------------------------------------------------------------------------
def _norm(policy: Policy, regions: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for table in policy.rules:
        for region in regions:
            rule = policy.rule_for(table, region)
            if rule is not None:
                out.setdefault(table, {})[region] = {
                    "columns": sorted(rule.columns),
                    "rows": rule.rows.describe() if rule.rows else "every row"}
    return out


@dataclass(frozen=True)
class Change:
    sign: str              # "+" starts crossing, "-" stops crossing, "~" row filter changed,
    table: str             # "!" a protection removed (classification, never-leaves tag)
    column: str | None     # None: the whole table / its rows
    regions: tuple[str, ...]
    detail: str = ""
    high_risk: bool = False   # a protection removed, or a table crossing to a new region

    def line(self) -> str:
        where = ", ".join(_shown(r) for r in self.regions)
        flag = "HIGH RISK " if self.high_risk else ""
        if self.sign == "!":
            return f"{flag}! {self.detail}"
        if self.column:
            return f"{flag}{self.sign} {self.table}.{self.column} → {where}"
        return f"{flag}{self.sign} {self.table} {self.detail} → {where}".replace("  ", " ")

    def as_dict(self) -> dict[str, Any]:
        return {"change": {"+": "starts", "-": "stops", "~": "rows",
                           "!": "protection_removed"}[self.sign],
                "table": self.table, "column": self.column,
                "regions": [_shown(r) for r in self.regions], "detail": self.detail,
                "risk": "high" if self.high_risk else "normal"}


def protections_removed(old: Policy, new: Policy) -> list[Change]:
    """Classification tags taken off a column or table, and tags no longer kept home."""
    out = []
    for key, tags in sorted(old.classification.items()):
        gone = sorted(tags - new.classification.get(key, frozenset()))
        if gone:
            table, column = key.split(".", 1)
            out.append(Change("!", table, None if column == "*" else column, (),
                              f"classification of {key} loses {', '.join(gone)}", True))
    for tag in sorted(old.never_leaves_region - new.never_leaves_region):
        out.append(Change("!", "", None, (), f"never_leaves_region no longer holds {tag}",
                          True))
    return out


def diff(old: Policy, new: Policy, regions: list[str] | None = None) -> list[Change]:
    """What starts and stops crossing which border, from a DeepDiff of both policies as
    seen by every region."""
    regs = universe(regions, old, new)
    a, b = _norm(old, regs), _norm(new, regs)
    tree = DeepDiff(a, b, ignore_order=True, view="tree")
    found: dict[tuple[str, str, str | None, str], set[str]] = {}

    def add(sign: str, table: str, column: str | None, region: str, detail: str = "") -> None:
        found.setdefault((sign, table, column, detail), set()).add(region)

    for kind in ("dictionary_item_added", "dictionary_item_removed"):
        sign = "+" if kind.endswith("added") else "-"
        for level in tree.get(kind, []):
            path = level.path(output_format="list")
            side = b if sign == "+" else a
            if len(path) == 1:                                # a whole table
                for region, entry in side[path[0]].items():
                    add(sign, path[0], None, region, _table_detail(entry))
            elif len(path) == 2:                              # a table for one region
                add(sign, path[0], None, path[1], _table_detail(side[path[0]][path[1]]))
    for kind in ("iterable_item_added", "iterable_item_removed"):
        sign = "+" if kind.endswith("added") else "-"
        for level in tree.get(kind, []):
            table, region, _, _ = level.path(output_format="list")
            add(sign, table, level.t2 if sign == "+" else level.t1, region)
    for level in tree.get("values_changed", []):
        table, region, field = level.path(output_format="list")[:3]
        if field == "rows":
            add("~", table, None, region, f"rows: was “{level.t1}”, now “{level.t2}”")
    order = {"-": 0, "+": 1, "~": 2}
    changes = [Change(sign, table, column, tuple(sorted(regs_)), detail,
                      high_risk=sign == "+" and column is None)   # a table to a new region
               for (sign, table, column, detail), regs_ in sorted(
                   found.items(), key=lambda kv: (kv[0][1], order[kv[0][0]], kv[0][2] or ""))]
    return protections_removed(old, new) + changes


def _table_detail(entry: dict[str, Any]) -> str:
    return f"(table; columns: {', '.join(entry['columns'])}; {entry['rows']})"


# -- structural warnings ------------------------------------------------------------------
def parent_warnings(policy: Policy, schema: Schema, regions: list[str]) -> list[str]:
    """Synced children whose rows would dead-letter at some destination."""
    out = []
    for region in regions:
        sent = policy.rules_to(region)
        for table, rule in sorted(sent.items()):
            info = schema.tables.get(table)
            if info is None:
                continue
            wire = set(rule.wire_columns(info))
            for fk in info.foreign_keys:
                if all(c in wire for c in fk.columns):
                    if fk.parent not in sent:
                        out.append(f"{table} goes to {region} but its parent {fk.parent} does "
                                   f"not ({', '.join(fk.columns)}): {table} rows that reference "
                                   f"a {fk.parent} will dead-letter in {region}")
                else:
                    required = [c for c in fk.columns if c in info.not_null]
                    if required:
                        out.append(f"{table} goes to {region} without {', '.join(required)}, "
                                   f"which is NOT NULL there: every {table} row will "
                                   f"dead-letter in {region}")
    return out

