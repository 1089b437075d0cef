"""Load ``policies/*.yaml`` into one validated ``Policy``.

Fail closed: a table with no rule stays home, a column not on its table's allow-list
stays home, and any doubt (unknown key, unknown column, a ``never_leaves_region`` column
on an allow-list, two files ruling the same table) refuses the whole policy, so that
the daemon keeps the last good one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sync import yamlfile
from sync.db.catalog import LOCAL_ONLY_COLUMNS, SYSTEM_COLUMNS, Schema
from sync.errors import FilterSyntaxError, PolicyError
from sync.policy.model import Policy, TableRule
from sync.policy.rowfilter import RowFilter

Name = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]*$")]
ColumnRef = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]*\.([a-z_][a-z0-9_]*|\*)$")]


class RuleFile(BaseModel):
    """One table's rule, as written in a policy file."""

    model_config = ConfigDict(extra="forbid", strict=True)
    columns: list[Name] = Field(description="Allow-list: the only columns that may leave.")
    rows: str | None = Field(None, description="Row filter; only matching rows leave.")
    to: list[Annotated[str, Field(pattern=r"^[a-z0-9*?\[\]_-]+$")]] | None = Field(
        None, description="Destination regions or patterns (eu-*); default: every peer.")
    description: str | None = None

    @field_validator("columns")
    @classmethod
    def _no_duplicates(cls, v: list[str]) -> list[str]:
        dup = sorted({c for c in v if v.count(c) > 1})
        if dup:
            raise ValueError(f"column listed twice: {', '.join(dup)}")
        return v


class PolicyFile(BaseModel):
    """The top level of a file in ``policies/``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    version: int = Field(1, ge=1, le=1)
    description: str | None = None
    classification: dict[ColumnRef, list[Name]] = Field(default_factory=dict)
    never_leaves_region: list[Name] = Field(default_factory=list)
    rules: dict[Name, RuleFile | list[RuleFile]] = Field(
        default_factory=dict,
        description="Per table: one rule, or a list of rules with disjoint destinations.")
    column_groups: dict[Name, list[list[Name]]] = Field(
        default_factory=dict,
        description="Per table: groups of columns that merge as one unit (amount with "
                    "currency, address lines): a concurrent edit takes the whole group from "
                    "the newer side. Every region's policy must declare the same groups.")
    alternate_keys: dict[Name, list[list[Name]]] = Field(
        default_factory=dict,
        description="Per table: its business keys (Dataverse alternate keys). Every unique "
                    "index of a tracked table is one already; declaring it here records it "
                    "in the reviewed policy, and `policy check` refuses a declared key that "
                    "no unique index enforces. Created in two regions at once, the key stays "
                    "with the copy that claimed it first; the later copy keeps a marked key.")


def policy_json_schema() -> dict:
    """JSON Schema of a policy file, from the same models that validate it."""
    schema = PolicyFile.model_json_schema()

    def tighten(node: object) -> None:
        if isinstance(node, dict):
            if "patternProperties" in node:      # keys are names: nothing else is allowed
                node["additionalProperties"] = False
            if node.get("title") == "Columns" and node.get("type") == "array":
                node["uniqueItems"] = True
            for value in node.values():
                tighten(value)
        elif isinstance(node, list):
            for value in node:
                tighten(value)
    tighten(schema)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://regionsync.dev/policy.schema.json",
            "title": "regionsync policy file", **schema}


def policy_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise PolicyError("policy directory does not exist", file=str(directory))
    files = sorted(p for p in directory.iterdir()
                   if p.suffix in (".yaml", ".yml") and not p.name.startswith("."))
    if not files:
        raise PolicyError("no policy files (*.yaml) found; with no policy nothing would sync",
                          file=str(directory))
    return files


def load_policy(directory: Path, schema: Schema | None = None,
                regions: list[str] | None = None) -> Policy:
    """Parse, merge and validate every policy file; with ``schema``, check it against the
    live database; with ``regions``, check that no region matches two rules of a table."""
    directory = Path(directory)
    digest = hashlib.sha256()
    parsed: list[tuple[Path, object, PolicyFile]] = []
    for path in policy_files(directory):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        doc = yamlfile.load(path, PolicyError)
        parsed.append((path, doc, yamlfile.validate(PolicyFile, doc, path, PolicyError)))

    classification: dict[str, frozenset[str]] = {}
    never: set[str] = set()
    rules: dict[str, list[TableRule]] = {}
    groups = _column_groups(parsed)
    for path, doc, pf in parsed:
        for key, tags in pf.classification.items():
            classification[key] = classification.get(key, frozenset()) | frozenset(tags)
        never |= set(pf.never_leaves_region)
        for table, entry in pf.rules.items():
            entries = entry if isinstance(entry, list) else [entry]
            for index, rf in enumerate(entries):
                loc: tuple = ("rules", table, index) if isinstance(entry, list) \
                    else ("rules", table)
                rule = dataclasses.replace(_rule(table, rf, path, doc, loc),
                                           groups=groups.get(table, ()))
                _check_groups(rule, doc, path)
                for other in rules.get(table, []):
                    if other.may_overlap(rule):
                        raise PolicyError(
                            f"two rules for table {table!r} can send to the same region "
                            f"({', '.join(other.to)} / {', '.join(rule.to)}): {other.where} and "
                            f"{rule.where}; give each region one rule", file=str(path),
                            line=rule.line, key=yamlfile.key_path(loc))
                rules.setdefault(table, []).append(rule)
    policy = Policy(rules={t: tuple(r) for t, r in rules.items()},
                    classification=classification,
                    never_leaves_region=frozenset(never), sha=digest.hexdigest()[:16],
                    files=tuple(str(p) for p, _, _ in parsed),
                    column_groups={t: g for t, g in groups.items()},
                    alternate_keys=_alternate_keys(parsed))
    docs = {str(p): d for p, d, _ in parsed}
    _check_residency(policy, docs)
    if schema is not None:
        check_against_schema(policy, schema, docs)
    for region in regions or ():
        policy.rules_to(region)  # raises on a region matched by two rules of one table
    return policy


def _column_groups(parsed: list[tuple[Path, object, PolicyFile]]
                   ) -> dict[str, tuple[tuple[str, ...], ...]]:
    """Every file's ``column_groups``: a group has two columns or more, and a column is
    in one group at most (two groups sharing a column would be one unit)."""
    out: dict[str, list[tuple[str, ...]]] = {}
    for path, doc, pf in parsed:
        for table, groups in pf.column_groups.items():
            for index, group in enumerate(groups):
                loc = ("column_groups", table, index)
                line, key = yamlfile.line_of(doc, loc), yamlfile.key_path(loc)
                if len(set(group)) < 2:
                    raise PolicyError(f"column group {table}: {group} needs two different "
                                      "columns or more", file=str(path), line=line, key=key)
                taken = {c for g in out.get(table, []) for c in g} & set(group)
                if taken:
                    raise PolicyError(f"column {table}.{sorted(taken)[0]} is in two column "
                                      "groups; merge them into one", file=str(path),
                                      line=line, key=key)
                out.setdefault(table, []).append(tuple(group))
    return {t: tuple(g) for t, g in out.items()}


def _alternate_keys(parsed: list[tuple[Path, object, PolicyFile]]
                    ) -> dict[str, tuple[tuple[str, ...], ...]]:
    out: dict[str, list[tuple[str, ...]]] = {}
    for path, doc, pf in parsed:
        for table, keys in pf.alternate_keys.items():
            for index, key in enumerate(keys):
                if not key or len(set(key)) != len(key):
                    loc = ("alternate_keys", table, index)
                    raise PolicyError(f"alternate key {table}: {key} needs one column or more, "
                                      "each once", file=str(path),
                                      line=yamlfile.line_of(doc, loc),
                                      key=yamlfile.key_path(loc))
                out.setdefault(table, []).append(tuple(key))
    return {t: tuple(k) for t, k in out.items()}


def _check_groups(rule: TableRule, doc: object, path: Path) -> None:
    """A rule sends a column group whole or not at all: half a group abroad would be
    merged by a different unit there than here."""
    for group in rule.groups:
        sent = [c for c in group if c in rule.columns]
        if sent and len(sent) != len(group):
            missing = [c for c in group if c not in rule.columns]
            raise PolicyError(
                f"rule for {rule.table} sends {', '.join(sent)} but not {', '.join(missing)} "
                f"of column group [{', '.join(group)}]; a group leaves whole or not at all",
                file=str(path), line=yamlfile.line_of(doc, (*rule.loc, "columns")) or rule.line,
                key=yamlfile.key_path((*rule.loc, "columns")))


def _rule(table: str, rf: RuleFile, path: Path, doc: object, loc: tuple) -> TableRule:
    row_filter = None
    if rf.rows is not None:
        try:
            row_filter = RowFilter.parse(rf.rows)
        except FilterSyntaxError as exc:
            raise PolicyError(exc.detail, file=str(path),
                              line=yamlfile.line_of(doc, (*loc, "rows")),
                              key=yamlfile.key_path((*loc, "rows"))) from exc
    return TableRule(table=table, columns=tuple(rf.columns), rows=row_filter,
                     to=tuple(rf.to) if rf.to else ("*",), file=str(path),
                     line=yamlfile.line_of(doc, loc) or 0, description=rf.description,
                     loc=loc)


def _column_line(docs: dict[str, object], rule: TableRule, column: str) -> tuple[int | None, str]:
    doc = docs.get(rule.file)
    try:
        index = list(rule.columns).index(column)
    except ValueError:
        return rule.line, yamlfile.key_path(rule.loc)
    loc = (*rule.loc, "columns", index)
    return yamlfile.line_of(doc, loc), yamlfile.key_path(loc)


def _check_residency(policy: Policy, docs: dict[str, object]) -> None:
    """Refuse any rule that would let a ``never_leaves_region`` column out."""
    for rule in policy.all_rules():
        whole = policy.classification.get(f"{rule.table}.*", frozenset())
        if whole & policy.never_leaves_region:
            raise PolicyError(
                f"table {rule.table!r} is classified {sorted(whole)} which never leaves its "
                "region, so it cannot have a rule", file=rule.file, line=rule.line,
                key=yamlfile.key_path(rule.loc))
        for column in rule.columns:
            tags = policy.tags(rule.table, column) & policy.never_leaves_region
            if tags:
                line, key = _column_line(docs, rule, column)
                raise PolicyError(
                    f"column {rule.table}.{column} is classified {sorted(tags)}, which never "
                    "leaves its region; remove it from the allow-list", file=rule.file,
                    line=line, key=key)
        if rule.rows:
            outside = sorted(rule.rows.columns - set(rule.columns) - set(SYSTEM_COLUMNS))
            if outside:
                raise PolicyError(
                    f"row filter reads column(s) {', '.join(outside)} that are not on the "
                    "allow-list; a filter may only read columns that are allowed to leave",
                    file=rule.file, line=yamlfile.line_of(docs.get(rule.file),
                                                          (*rule.loc, "rows")),
                    key=yamlfile.key_path((*rule.loc, "rows")))


def check_against_schema(policy: Policy, schema: Schema,
                         docs: dict[str, object] | None = None) -> list[str]:
    """Unknown tables/columns are errors; returns the unclassified columns (warnings)."""
    docs = docs or {}
    for rule in policy.all_rules():
        info = schema.tables.get(rule.table)
        if info is None:
            raise PolicyError(f"unknown table {rule.table!r} (tracked tables: "
                              f"{', '.join(sorted(schema.tables))})", file=rule.file,
                              line=rule.line, key=yamlfile.key_path(rule.loc))
        for column in rule.columns:
            if column not in info.columns or column in LOCAL_ONLY_COLUMNS:
                line, key = _column_line(docs, rule, column)
                why = ("is assigned by each region and never travels"
                       if column in LOCAL_ONLY_COLUMNS else "does not exist")
                raise PolicyError(f"column {rule.table}.{column} {why}", file=rule.file,
                                  line=line, key=key)
        if rule.rows:
            for column in sorted(rule.rows.columns - set(info.columns)):
                raise PolicyError(f"row filter names unknown column {rule.table}.{column}",
                                  file=rule.file, line=yamlfile.line_of(
                                      docs.get(rule.file), (*rule.loc, "rows")),
                                  key=yamlfile.key_path((*rule.loc, "rows")))
            problem = rule.rows.type_problem(info.types)
            if problem:
                raise PolicyError(problem, file=rule.file, line=yamlfile.line_of(
                    docs.get(rule.file), (*rule.loc, "rows")),
                    key=yamlfile.key_path((*rule.loc, "rows")))
    for table, groups in policy.column_groups.items():
        info = schema.tables.get(table)
        for group in groups:
            bad = [c for c in group if info is None or c not in info.columns
                   or c in (info.pk, *SYSTEM_COLUMNS, *LOCAL_ONLY_COLUMNS)]
            if bad:
                raise PolicyError(f"column group {table}: [{', '.join(group)}] names "
                                  f"{table}.{bad[0]}, which is not a data column of a tracked "
                                  "table", file=policy.files[0] if policy.files else None,
                                  key=f"column_groups.{table}")
    for table, keys in policy.alternate_keys.items():
        info = schema.tables.get(table)
        for cols in keys:
            listed = ", ".join(cols)
            unknown = [c for c in cols if info is None or c not in info.columns]
            if unknown:
                raise PolicyError(f"alternate key {table}: [{listed}] names unknown column "
                                  f"{table}.{unknown[0]}", key=f"alternate_keys.{table}",
                                  file=policy.files[0] if policy.files else None)
            assert info is not None
            if not any(set(k.columns) == set(cols) for k in info.alternate_keys):
                raise PolicyError(f"alternate key {table}: [{listed}] has no unique index in "
                                  "the database, so one region could hold it twice; create "
                                  f"one (CREATE UNIQUE INDEX ON public.{table} ({listed})) or "
                                  "remove the declaration", key=f"alternate_keys.{table}",
                                  file=policy.files[0] if policy.files else None)
    for key in policy.classification:
        table, column = key.split(".", 1)
        if table not in schema.tables or (column != "*" and column not in
                                           schema.tables[table].columns):
            raise PolicyError(f"classification names unknown column {key}",
                              file=policy.files[0] if policy.files else None,
                              key=f"classification.{key}")
    return policy.unclassified(schema)


def policy_fingerprint(policy: Policy) -> str:
    """Stable JSON of the files and of what the policy lets through (for audit rows)."""
    return json.dumps({
        "files": list(policy.files),
        "rules": {t: [{"columns": list(r.columns), "rows": r.rows.text if r.rows else None,
                       "to": list(r.to)} for r in rules]
                  for t, rules in sorted(policy.rules.items())}})
