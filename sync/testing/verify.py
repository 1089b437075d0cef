"""Read back what the regions hold, to compare them (demo, tests, and operators' checks)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import psycopg
from psycopg import sql

from sync.db.catalog import Schema
from sync.policy.model import Policy


def synced_rows(conn: psycopg.Connection, schema: Schema, policy: Policy, table: str,
                destination: str) -> list[tuple]:
    """Rows of ``table`` as ``destination`` would receive them (wire columns), by key."""
    info = schema.tables[table]
    rule = policy.rule_for(table, destination)
    if rule is None:
        return []
    cols = rule.wire_columns(info)
    q = sql.SQL("SELECT {} FROM public.{} t{} ORDER BY {}").format(
        sql.SQL(", ").join(sql.Identifier("t", c) for c in cols), sql.Identifier(table),
        sql.SQL(" WHERE ") + rule.rows.to_sql("t") if rule.rows else sql.SQL(""),
        sql.Identifier(info.pk))
    return conn.execute(q).fetchall()


def fingerprint(conn: psycopg.Connection, schema: Schema, policy: Policy,
                destination: str) -> dict[str, str]:
    """Per synced table: a digest of every synced column of every row."""
    out = {}
    for table in sorted(policy.rules_to(destination)):
        rows = synced_rows(conn, schema, policy, table, destination)
        out[table] = hashlib.sha256(repr(rows).encode()).hexdigest()[:12] + f"/{len(rows)}"
    return out


def converged(conns: Mapping[str, psycopg.Connection], schema: Schema, policy: Policy) -> bool:
    """True when every region holds identical values in every column synced to all of them."""
    prints = [fingerprint(c, schema, policy, region) for region, c in conns.items()]
    return all(p == prints[0] for p in prints[1:])
