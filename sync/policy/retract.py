"""Copies that a narrower policy no longer allows here: find them (drift), remove them
(retract).

Only copies are touched: rows another region wrote last (``sync_origin`` is not this
region). A column counts as drift only if it *used to* come from that region
(``sync.narrowed_column``), so this region's own values in columns that never synced —
its own medical notes on a contact created abroad — are never removed.

Retraction writes with ``regionsync.origin`` set to the copy's origin and leaves no
tombstone: the journal entry carries the owner's origin, so no mesh peer pulls it and
nothing is deleted or changed at the owner.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg
from psycopg import sql

from sync.db import state
from sync.db.catalog import Schema
from sync.policy.model import Policy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Drift:
    table: str
    origin: str
    action: str                  # "null_columns" | "delete_rows"
    columns: tuple[str, ...]
    rows: int
    reason: str

    def line(self) -> str:
        what = (f"{self.rows} row(s): clear {', '.join(self.columns)}"
                if self.action == "null_columns" else f"{self.rows} row(s): delete")
        return f"{self.table} from {self.origin}: {what} — {self.reason}"


def _origins(conn: psycopg.Connection, table: str, region: str) -> list[str]:
    q = sql.SQL("SELECT DISTINCT sync_origin FROM public.{} WHERE sync_origin <> %s "
                "ORDER BY 1").format(sql.Identifier(table))
    return [r[0] for r in conn.execute(q, (region,))]


def find_drift(conn: psycopg.Connection, schema: Schema, policy: Policy,
               region: str) -> list[Drift]:
    """Out-of-policy copies in this region, in the order retract applies them."""
    nulls, deletes = [], []
    narrowed_map = state.narrowed_columns(conn)
    for table in schema.topo_order():
        info = schema.tables[table]
        rule = policy.rule_for(table, region)
        ident = sql.Identifier(table)
        for origin in _origins(conn, table, region):
            if rule is None:
                n = conn.execute(sql.SQL("SELECT count(*) FROM public.{} WHERE sync_origin = %s")
                                 .format(ident), (origin,)).fetchone()[0]
                deletes.append(Drift(table, origin, "delete_rows", (), n,
                                     f"no rule sends {table} to {region}"))
                continue
            if rule.rows is not None:
                n = conn.execute(sql.SQL(
                    "SELECT count(*) FROM public.{} t WHERE sync_origin = %s AND NOT "
                    "coalesce({}, false)").format(ident, rule.rows.to_sql("t")),
                    (origin,)).fetchone()[0]
                if n:
                    deletes.append(Drift(table, origin, "delete_rows", (), n,
                                         f"row filter ({rule.where}): {rule.rows.describe()}"))
            wire = set(rule.wire_columns(info))
            cols = tuple(c for c in narrowed_map.get((origin, table), ()) if c not in wire
                         and c in info.columns)
            if cols:
                n = conn.execute(sql.SQL(
                    "SELECT count(*) FROM public.{} WHERE sync_origin = %s AND ({})").format(
                    ident, sql.SQL(" OR ").join(sql.SQL("{} IS NOT NULL").format(
                        sql.Identifier(c)) for c in cols)), (origin,)).fetchone()[0]
                if n:
                    nulls.append(Drift(table, origin, "null_columns", cols, n,
                                       f"no longer on the allow-list for {region}"))
    order = {t: i for i, t in enumerate(schema.topo_order())}
    deletes.sort(key=lambda d: -order[d.table])            # children first
    return [d for d in nulls + deletes if d.rows]


def retract(conn: psycopg.Connection, policy: Policy, region: str,
            items: list[Drift]) -> list[tuple[Drift, int, str | None]]:
    """Apply each drift item in its own transaction; returns (item, rows, error)."""
    done = []
    for item in items:
        rule = policy.rule_for(item.table, region)
        ident = sql.Identifier(item.table)
        if item.action == "null_columns":
            stmt = sql.SQL("UPDATE public.{} SET {} WHERE sync_origin = %s AND ({})").format(
                ident, sql.SQL(", ").join(sql.SQL("{} = NULL").format(sql.Identifier(c))
                                          for c in item.columns),
                sql.SQL(" OR ").join(sql.SQL("{} IS NOT NULL").format(sql.Identifier(c))
                                     for c in item.columns))
        elif rule is not None and rule.rows is not None:
            stmt = sql.SQL("DELETE FROM public.{} t WHERE sync_origin = %s AND NOT "
                           "coalesce({}, false)").format(ident, rule.rows.to_sql("t"))
        else:
            stmt = sql.SQL("DELETE FROM public.{} WHERE sync_origin = %s").format(ident)
        try:
            with conn.transaction():
                conn.execute("SELECT set_config('regionsync.origin', %s, true)", (item.origin,))
                n = conn.execute(stmt, (item.origin,)).rowcount
                conn.execute("""INSERT INTO sync.retraction_log (tablename, origin, action,
                                columns, rows, reason, policy_sha)
                                VALUES (%s, %s, %s, %s, %s, %s, %s)""",
                             (item.table, item.origin, item.action, list(item.columns) or None,
                              n, item.reason, policy.sha))
                if item.action == "null_columns":
                    state.forget_narrowed(conn, item.origin, item.table, list(item.columns))
            log.info("retracted %s", item.line())
            done.append((item, n, None))
        except psycopg.errors.IntegrityError as exc:
            reason = exc.diag.message_primary or str(exc)
            log.error("could not retract %s: %s", item.line(), reason)
            done.append((item, 0, reason))
    return done
