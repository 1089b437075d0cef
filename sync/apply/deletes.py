"""Incoming deletes and withdrawals, applied from a staged segment inside the page
transaction of ``sync.apply.applier``.

A delete leaves a tombstone first (the capture trigger reads the deletion time from it,
and it keeps an older version arriving later from another peer from resurrecting the
row), then removes the row if the delete is at least as new as the row's incarnation. A
withdrawal is not a business delete: no tombstone, only the copies the peer no longer
lets us hold.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from sync.apply.conflicts import ConflictRecorder
from sync.apply.merge import existence
from sync.apply.rowfallback import RowFallback
from sync.db.catalog import TableInfo
from sync.db.connect import scalar
from sync.records import PageResult


class Deletes:
    def __init__(self, conn: psycopg.Connection, conflicts: ConflictRecorder,
                 rows: RowFallback, *, peer: str, region: str, origins: str) -> None:
        self.conn = conn
        self.conflicts = conflicts
        self.rows = rows
        self.peer = peer
        self.region = region
        self.origins = origins   # whose copies a withdrawal from this peer may remove

    # -- withdrawals ----------------------------------------------------------------------
    def withdraw(self, info: TableInfo, stage: sql.Identifier, result: PageResult) -> None:
        """Remove copies the peer no longer lets us hold (a row that left a row filter).
        Not a business delete: no tombstone, and the journal entry carries the peer's
        origin, so nothing is pulled back or forwarded as a delete."""
        theirs = (sql.SQL("t.sync_origin = {}").format(sql.Literal(self.peer))
                  if self.origins == "peer"
                  else sql.SQL("t.sync_origin <> {}").format(sql.Literal(self.region)))
        n = self.conn.execute(sql.SQL(
            "DELETE FROM public.{} t USING {} w WHERE t.{} = w.pk AND {}").format(
            sql.Identifier(info.name), stage, sql.Identifier(info.pk), theirs)).rowcount
        result.applied[(info.name, "withdraw")] += n

    # -- deletes --------------------------------------------------------------------------
    def delete(self, info: TableInfo, stage: sql.Identifier, result: PageResult) -> None:
        pk, table = sql.Identifier(info.pk), sql.Identifier(info.name)
        tname = sql.Literal(info.name)
        # A delete that loses to a newer local version is a conflict too.
        result.conflicts[info.name] += self.conflicts.losing_deletes(info, stage)
        # Tombstones first: the capture trigger reads the deletion time from them, and they
        # keep an older version arriving later from another peer from resurrecting the row.
        stmt = sql.SQL("""
            WITH tomb AS (
                INSERT INTO sync.tombstone AS tb (tablename, pk, modifiedon, origin)
                SELECT {tname}, d.pk, d.modifiedon, d.origin FROM {stage} d WHERE {one}
                ON CONFLICT (tablename, pk) DO UPDATE
                    SET modifiedon = EXCLUDED.modifiedon, origin = EXCLUDED.origin
                WHERE (EXCLUDED.modifiedon, EXCLUDED.origin) > (tb.modifiedon, tb.origin))
            SELECT 1""")
        delete = sql.SQL("""
            WITH r AS (DELETE FROM public.{table} t USING {stage} d
                       WHERE t.{pk} = d.pk AND {one}
                         AND (d.modifiedon, d.origin) >= {t_version}
                       RETURNING 1)
            SELECT count(*) FROM r""")

        lock_rows = sql.SQL("""
            SELECT count(*) FROM (SELECT 1 FROM public.{table} t
                                  WHERE t.{pk} IN (SELECT d.pk FROM {stage} d WHERE {one})
                                  ORDER BY t.{pk} FOR UPDATE) l""")

        def run(one: sql.Composable, params: tuple[Any, ...] = ()) -> None:
            # row locks in key order first, as the upserts take them
            self.conn.execute(lock_rows.format(table=table, pk=pk, stage=stage, one=one), params)
            self.conn.execute(stmt.format(tname=tname, stage=stage, one=one), params)
            n = scalar(self.conn.execute(delete.format(table=table, stage=stage, pk=pk, one=one,
                                                       t_version=existence(info, "t")),
                                  params))
            result.applied[(info.name, "delete")] += n

        self.rows.bulk_or_rows(info, stage, "delete", lambda: run(sql.SQL("true")),
                           lambda key: run(sql.SQL("d.pk = %s"), (key,)), result)


__all__ = ["Deletes"]
