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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from uuid import UUID

import psycopg
from psycopg import sql

from sync.db import state
from sync.db.catalog import Schema
from sync.db.connect import scalar
from sync.policy.model import Policy, TableRule

log = logging.getLogger(__name__)

RuleFor = Callable[[str, str], "TableRule | None"]   # (table, origin) -> the rule in force
CHUNK = 5000


@dataclass(frozen=True)
class Drift:
    table: str
    origin: str
    action: str                  # "null_columns" | "delete_rows" | "delete_keys"
    columns: tuple[str, ...]
    rows: int
    reason: str
    keys: tuple[UUID, ...] = ()  # delete_keys (columns: the key column): copies their
                                 # owner no longer sends us

    def line(self) -> str:
        what = (f"{self.rows} row(s): clear {', '.join(self.columns)}"
                if self.action == "null_columns" else f"{self.rows} row(s): delete")
        return f"{self.table} from {self.origin}: {what} — {self.reason}"


def _origins(conn: psycopg.Connection, table: str, region: str) -> list[str]:
    q = sql.SQL("SELECT DISTINCT sync_origin FROM public.{} WHERE sync_origin <> %s "
                "ORDER BY 1").format(sql.Identifier(table))
    return [r[0] for r in conn.execute(q, (region,))]


def withheld_by_owner(conn: psycopg.Connection, owner: psycopg.Connection, schema: Schema,
                      table: str, origin: str) -> list[UUID]:
    """Keys of copies here from ``origin`` that the owner no longer lets us read (its row
    security hides them, or it deleted them and the delete is still on its way), read
    through the role the owner made for us: drift from the owner's truth, not ours."""
    info = schema.tables[table]
    q = sql.SQL("SELECT {pk} FROM public.{t} WHERE sync_origin = %s ORDER BY 1").format(
        pk=sql.Identifier(info.pk), t=sql.Identifier(table))
    ours = [r[0] for r in conn.execute(q, (origin,))]
    gone: list[UUID] = []
    check = sql.SQL("SELECT k FROM unnest(%s::uuid[]) AS k WHERE NOT EXISTS "
                    "(SELECT 1 FROM public.{t} x WHERE x.{pk} = k)").format(
        t=sql.Identifier(table), pk=sql.Identifier(info.pk))
    for i in range(0, len(ours), CHUNK):
        gone += [r[0] for r in owner.execute(check, (ours[i:i + CHUNK],))]
    return gone


def find_drift(conn: psycopg.Connection, schema: Schema, policy: Policy, region: str, *,
               rule_for: RuleFor | None = None, origins: Iterable[str] | None = None,
               withheld: dict[tuple[str, str], Sequence[UUID]] | None = None) -> list[Drift]:
    """Out-of-policy copies in this region, in the order retract applies them.

    ``rule_for`` gives the rule in force for copies of a table from an origin (our policy
    intersected with what the origin grants us); by default our own policy alone.
    ``origins`` limits the check to copies from those regions; ``withheld`` names, per
    (table, origin), copies their owner no longer sends us (``withheld_by_owner``)."""
    nulls, deletes = [], []
    narrowed_map = state.narrowed_columns(conn)
    only = set(origins) if origins is not None else None
    for table in schema.topo_order():
        info = schema.tables[table]
        ident = sql.Identifier(table)
        for origin in _origins(conn, table, region):
            if only is not None and origin not in only:
                continue
            rule = (rule_for or (lambda t, _o: policy.rule_for(t, region)))(table, origin)
            keys = tuple((withheld or {}).get((table, origin), ()))
            if keys and rule is not None:
                deletes.append(Drift(table, origin, "delete_keys", (info.pk,), len(keys),
                                     f"{origin} no longer sends these rows to {region}",
                                     keys))
            if rule is None:
                n = scalar(conn.execute(
                    sql.SQL("SELECT count(*) FROM public.{} WHERE sync_origin = %s")
                    .format(ident), (origin,)))
                deletes.append(Drift(table, origin, "delete_rows", (), n,
                                     f"no rule sends {table} to {region}"))
                continue
            if rule.rows is not None:
                n = scalar(conn.execute(sql.SQL(
                    "SELECT count(*) FROM public.{} t WHERE sync_origin = %s AND NOT "
                    "coalesce({}, false)").format(ident, rule.rows.to_sql("t")),
                    (origin,)))
                if n:
                    deletes.append(Drift(table, origin, "delete_rows", (), n,
                                         f"row filter ({rule.where}): {rule.rows.describe()}"))
            wire = set(rule.wire_columns(info))
            cols = tuple(c for c in narrowed_map.get((origin, table), ()) if c not in wire
                         and c in info.columns)
            if cols:
                n = scalar(conn.execute(sql.SQL(
                    "SELECT count(*) FROM public.{} WHERE sync_origin = %s AND ({})").format(
                    ident, sql.SQL(" OR ").join(sql.SQL("{} IS NOT NULL").format(
                        sql.Identifier(c)) for c in cols)), (origin,)))
                if n:
                    nulls.append(Drift(table, origin, "null_columns", cols, n,
                                       f"no longer on the allow-list for {region}"))
    order = {t: i for i, t in enumerate(schema.topo_order())}
    deletes.sort(key=lambda d: -order[d.table])            # children first
    return [d for d in nulls + deletes if d.rows]


def retract(conn: psycopg.Connection, policy: Policy, region: str, items: list[Drift], *,
            rule_for: RuleFor | None = None) -> list[tuple[Drift, int, str | None]]:
    """Apply each drift item in its own transaction; returns (item, rows, error)."""
    done: list[tuple[Drift, int, str | None]] = []
    for item in items:
        rule = (rule_for or (lambda t, _o: policy.rule_for(t, region)))(item.table, item.origin)
        ident = sql.Identifier(item.table)
        params: tuple = (item.origin,)
        if item.action == "delete_keys":
            stmt = sql.SQL("DELETE FROM public.{} WHERE sync_origin = %s AND {} = ANY(%s)").format(
                ident, sql.Identifier(item.columns[0]))
            params = (item.origin, list(item.keys))
        elif item.action == "null_columns":
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
                n = conn.execute(stmt, params).rowcount
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


def owners_truth(conn: psycopg.Connection, schema: Schema, policy: Policy, region: str,
                 owners: dict[str, psycopg.Connection]) -> tuple[RuleFor, dict, list[str]]:
    """What each owner lets us hold, read through the role it made for us: the rule in
    force per (table, origin) — our policy intersected with its grant — and the copies it
    no longer sends (``withheld_by_owner``). For an owner we read with a role it did not
    make (no grant), our own policy is all there is. Returns (rule_for, withheld, notes)."""
    from sync.policy.ingress import link_rules
    from sync.source.reader import SourceReader

    rules: dict[str, dict[str, TableRule]] = {}
    withheld: dict[tuple[str, str], list[UUID]] = {}
    notes = []
    for origin, owner in owners.items():
        granted = SourceReader(owner, peer=origin, region=region).grants()
        rules[origin], refused = link_rules(policy, set(schema.tables), granted, peer=origin,
                                            region=region)
        notes += [f"{origin}: {why}" for why in refused.values()]
        if granted is None:
            notes.append(f"{origin}: read with a role it did not make for {region}; "
                         "checked against our own policy only")
            continue
        for table in rules[origin]:
            keys = withheld_by_owner(conn, owner, schema, table, origin)
            if keys:
                withheld[(table, origin)] = keys

    def rule_for(table: str, origin: str) -> TableRule | None:
        if origin in rules:
            return rules[origin].get(table)
        return policy.rule_for(table, region)
    return rule_for, withheld, notes


def withdraw_narrowed(conn: psycopg.Connection, schema: Schema, policy: Policy, region: str,
                      peer: str, rules: dict[str, TableRule]) -> None:
    """Invariant 8 at the receiver: a table, column or row filter narrowed by either side
    (our policy, or the owner's grant: ``rules`` is their intersection) removes the copies
    from ``peer`` that it no longer allows, at once. Not a business delete: no tombstone,
    and the journal entry carries the peer's origin, so nothing is echoed."""
    def rule_for(table: str, _origin: str) -> TableRule | None:
        return rules.get(table)
    items = find_drift(conn, schema, policy, region, rule_for=rule_for, origins=[peer])
    for item, n, error in retract(conn, policy, region, items, rule_for=rule_for):
        extra = {"peer": peer, "table": item.table}
        if error:
            log.error("peer %s: could not withdraw %s: %s", peer, item.line(), error,
                      extra=extra)
        else:
            log.info("peer %s: withdrew %d row(s): %s", peer, n, item.line(),
                     extra={**extra, "rows": n})


def remove_missing(conn: psycopg.Connection, owner: psycopg.Connection, schema: Schema,
                   policy: Policy, region: str, peer: str, tables: list[str]) -> None:
    """After a reload from ``peer`` (`resync`, or an expired token): copies from it that it
    no longer has — deleted there while we could not follow, their tombstones pruned —
    are removed as withdrawals (no tombstone, no echo), so nothing is resurrected."""
    items = []
    for table in tables:
        keys = withheld_by_owner(conn, owner, schema, table, peer)
        if keys:
            items.append(Drift(table, peer, "delete_keys", (schema.tables[table].pk,),
                               len(keys), f"no longer at {peer} (found by a reload)",
                               tuple(keys)))
    for item, n, error in retract(conn, policy, region, items):
        if error:
            log.error("peer %s: reload could not remove %s: %s", peer, item.line(), error,
                      extra={"peer": peer, "table": item.table})
        else:
            log.info("peer %s: reload removed %d row(s): %s", peer, n, item.line(),
                     extra={"peer": peer, "table": item.table, "rows": n})
