"""Erasure of a record in every region (`regionsync forget`), with a receipt per region.

Where `forget` runs, ``forget`` deletes the record and its region-local children (a child
whose reference may be empty is unlinked instead: an order outlives its customer),
gives each erased key an immortal tombstone (``modifiedon = infinity``: no version from
any region, whatever its clock, can resurrect it), files an erasure request per key and
purges the values this region still holds elsewhere. The delete travels like any other;
every region that receives the table finds the request in the batch that carries the
delete (``follow``), purges the same way and writes its receipt. Migration 0011 has the
tables and the views a requesting region reads receipts through.

What is kept: the key, in the tombstone and in the delete's journal entry (without them
the record could come back), and the receipts. No value of the record.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from sync.db import state
from sync.db.catalog import Schema

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Receipt:
    region: str                   # where it was carried out
    table: str
    key: UUID
    requested_by: str
    request_id: int
    removed: dict[str, int]       # what was removed, per place
    at: datetime

    def line(self) -> str:
        what = ", ".join(f"{k} {v}" for k, v in sorted(self.removed.items()) if v) or \
            "nothing held"
        return (f"{self.region}: {self.table} {self.key} erased at {self.at.isoformat()} "
                f"(request {self.requested_by}#{self.request_id}): {what}")

    def as_dict(self) -> dict[str, Any]:
        return {"region": self.region, "table": self.table, "key": str(self.key),
                "requested_by": self.requested_by, "request_id": self.request_id,
                "removed": self.removed, "at": self.at.isoformat()}


def purge(conn: psycopg.Connection, table: str, key: UUID) -> dict[str, int]:
    """Every value of ``table``/``key`` this region holds beside the row itself: losing
    versions in the conflict log, dead letters, and the key in journal entries other than
    deletes (a delete's entry carries the erasure to the regions that pull from here)."""
    removed = state.purge_records(conn, table, key)
    whole = conn.execute("DELETE FROM sync.change_set WHERE tablename = %s AND op <> 'd' "
                         "AND pks = ARRAY[%s]::uuid[]", (table, key)).rowcount
    part = conn.execute("""
        UPDATE sync.change_set c SET (pks, versions) = (
            SELECT array_agg(u.p ORDER BY u.i), array_agg(u.v ORDER BY u.i)
            FROM unnest(c.pks, c.versions) WITH ORDINALITY AS u(p, v, i) WHERE u.p <> %s)
        WHERE c.tablename = %s AND c.op <> 'd' AND %s = ANY(c.pks)""",
                        (key, table, key)).rowcount
    removed["journal_entries"] = whole + part
    return removed


def carry_out(conn: psycopg.Connection, region: str, requested_by: str,
              requests: list[tuple[int, str, UUID]],
              extra: dict[UUID, dict[str, int]] | None = None) -> list[Receipt]:
    """Purge each requested (id, table, key) here and write its receipt (idempotent: a
    request already carried out keeps its first receipt)."""
    out = []
    for request_id, table, key in requests:
        removed = {**(extra or {}).get(key, {}), **purge(conn, table, key)}
        at = state.record_receipt(conn, requested_by=requested_by, request_id=request_id,
                                  table=table, key=key, region=region, removed=removed)
        if at is not None:
            out.append(Receipt(region, table, key, requested_by, request_id, removed, at))
            log.info("erased %s %s here (request %s#%d)", table, key, requested_by,
                     request_id, extra={"table": table, "peer": requested_by})
    return out


def _delete_tree(conn: psycopg.Connection, schema: Schema, table: str, key: UUID,
                 erased: list[tuple[str, UUID]], counts: dict[str, int]) -> None:
    """Delete ``key`` and, first, what refers to it: children whose reference is NOT NULL
    are erased with it; children whose reference may be empty are unlinked."""
    for child in schema.tables.values():
        for fk in child.foreign_keys:
            if fk.parent != table or len(fk.columns) != 1:
                continue
            col = sql.Identifier(fk.columns[0])
            if fk.columns[0] not in child.not_null:
                n = conn.execute(sql.SQL("UPDATE public.{} SET {} = NULL WHERE {} = %s").format(
                    sql.Identifier(child.name), col, col), (key,)).rowcount
                if n:
                    counts[f"{child.name} unlinked"] = counts.get(f"{child.name} unlinked",
                                                                  0) + n
                continue
            for (ck,) in conn.execute(sql.SQL("SELECT {} FROM public.{} WHERE {} = %s").format(
                    sql.Identifier(child.pk), sql.Identifier(child.name), col), (key,)
                    ).fetchall():
                _delete_tree(conn, schema, child.name, ck, erased, counts)
    info = schema.tables[table]
    conn.execute(sql.SQL("DELETE FROM public.{} WHERE {} = %s").format(
        sql.Identifier(table), sql.Identifier(info.pk)), (key,))
    erased.append((table, key))


def forget(conn: psycopg.Connection, schema: Schema, region: str, table: str,
           keys: list[UUID]) -> list[Receipt]:
    """Erase ``keys`` of ``table`` starting here, all in one transaction; returns this
    region's receipts (one per erased record, children included)."""
    receipts = []
    with conn.transaction():
        for key in keys:
            erased: list[tuple[str, UUID]] = []
            counts: dict[str, int] = {}
            _delete_tree(conn, schema, table, key, erased, counts)
            for t, k in erased:
                # immortal: beats any version, so no region can bring the record back
                conn.execute(
                    "INSERT INTO sync.tombstone (tablename, pk, modifiedon, origin) "
                    "VALUES (%s, %s, 'infinity', %s) ON CONFLICT (tablename, pk) DO UPDATE "
                    "SET modifiedon = 'infinity', origin = EXCLUDED.origin", (t, k, region))
                request = state.request_erasure(conn, t, k)
                extra = {"rows": 1, **(counts if (t, k) == (table, key) else {})}
                receipts += carry_out(conn, region, region, [(request, t, k)], {k: extra})
    return receipts


def follow(local: psycopg.Connection, source: psycopg.Connection, *, peer: str, region: str,
           bound: str, initial: bool) -> list[Receipt]:
    """Carry out the erasures ``peer`` requested, up to the batch just applied (its bound:
    the requests committed with the deletes it carried). On an initial load there is
    nothing to purge: the requests are only marked as seen. Reads nothing new and writes
    nothing when there is no request."""
    seen = state.erasure_seen(local, peer)
    try:
        with source.transaction():   # a savepoint: a peer not yet migrated to 0011 is no error
            rows = source.execute(
                "SELECT id, tablename, pk FROM sync.egress_erasure WHERE id > %s "
                "AND pg_visible_in_snapshot(txid, %s::pg_snapshot) ORDER BY id",
                (seen, bound)).fetchall()
    except psycopg.errors.UndefinedTable:
        log.warning("peer %s has no erasure requests to offer (migrate it to 0011)", peer,
                    extra={"peer": peer})
        return []
    if not rows:
        return []
    with local.transaction():
        receipts = [] if initial else carry_out(local, region, peer, [tuple(r) for r in rows])
        state.mark_erasure_seen(local, peer, rows[-1][0])
    return receipts


def receipts_from(conn: psycopg.Connection, requested_by: str, table: str,
                  keys: list[UUID]) -> list[Receipt]:
    """Receipts a region holds for erasures ``requested_by`` asked for (read through the
    ``sync.egress_erasure_log`` view, so a peer shows only what we asked)."""
    return [Receipt(r[4], r[2], r[3], r[0], r[1], r[6], r[5]) for r in conn.execute(
        "SELECT requested_by, request_id, tablename, pk, region, erased_at, removed "
        "FROM sync.egress_erasure_log WHERE requested_by = %s AND tablename = %s "
        "AND pk = ANY(%s) ORDER BY erased_at", (requested_by, table, keys))]
