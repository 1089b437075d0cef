"""Read back what the regions hold, to compare them (demo, tests, and operators' checks)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import psycopg
from psycopg import sql

from sync.db import origins
from sync.db.catalog import Schema
from sync.policy.model import Policy
from sync.source.rowversion import wire_value


def synced_rows(conn: psycopg.Connection, schema: Schema, policy: Policy, table: str,
                destination: str) -> list[tuple]:
    """Rows of ``table`` as ``destination`` would receive them (wire columns), by key."""
    info = schema.tables[table]
    rule = policy.rule_for(table, destination)
    if rule is None:
        return []
    cols = (*rule.wire_columns(info), *rule.version_columns(info))
    q = sql.SQL("SELECT {} FROM public.{} t{} ORDER BY {}").format(
        sql.SQL(", ").join(wire_value(info, rule, c, origins.load(conn)) for c in cols),
        sql.Identifier(table),
        sql.SQL(" WHERE ") + rule.rows.to_sql("t") if rule.rows else sql.SQL(""),
        sql.Identifier(info.pk))
    return conn.execute(q).fetchall()


def fingerprint(conn: psycopg.Connection, schema: Schema, policy: Policy,
                regions: list[str]) -> dict[str, str]:
    """Per table synced to every one of ``regions``: a digest of the columns all of them
    receive, of the rows every one of their row filters lets through. (Under a policy that
    sends e-mail addresses only to EU regions, the regions agree on everything but those.)"""
    out = {}
    for table in sorted(schema.tables):
        rules = [policy.rule_for(table, r) for r in regions]
        if not rules or any(r is None for r in rules):
            continue
        info = schema.tables[table]
        common = set.intersection(*(set(r.wire_columns(info)) for r in rules if r))
        cols = [c for c in info.columns if c in common]
        values: list[sql.Composable] = [sql.Identifier("t", c) for c in cols]
        if info.per_column:
            # a row's own time and origin are local ("last modified here"); the versions
            # of the columns every region receives are what they must agree on
            values = [sql.Identifier("t", c) for c in cols
                      if c not in ("modifiedon", "sync_origin")]
            values += [sql.SQL("coalesce(t.{}, t.sync_base)").format(sql.Identifier(c + "__v"))
                       for c in cols if c in info.versioned]
        filters = [r.rows.to_sql("t") for r in rules if r and r.rows is not None]
        q = sql.SQL("SELECT {} FROM public.{} t{} ORDER BY {}").format(
            sql.SQL(", ").join(values), sql.Identifier(table),
            sql.SQL(" WHERE ") + sql.SQL(" AND ").join(filters) if filters else sql.SQL(""),
            sql.Identifier(info.pk))
        rows = conn.execute(q).fetchall()
        out[table] = hashlib.sha256(repr(rows).encode()).hexdigest()[:12] + f"/{len(rows)}"
    return out


def converged(conns: Mapping[str, psycopg.Connection], schema: Schema, policy: Policy) -> bool:
    """True when every region holds identical values in every column synced to all of them."""
    regions = list(conns)
    prints = [fingerprint(c, schema, policy, regions) for c in conns.values()]
    return all(p == prints[0] for p in prints[1:])
