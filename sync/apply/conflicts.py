"""Who lost last-writer-wins, written to ``sync.conflict_log`` with a DeepDiff.

Three ways to lose: an incoming version older than our row or tombstone; an incoming
delete older than our row; and a local version that an incoming, newer version
overwrites although the peer never saw it (its token for us does not cover our change).
The last one matters most: the region whose edit lost is often the only one that sees it.
"""

from __future__ import annotations

from typing import Any

import psycopg
from deepdiff import DeepDiff
from psycopg import sql

from sync.db import state
from sync.db.catalog import TableInfo


def _row_object(cols: tuple[str, ...]) -> sql.Composable:
    """Arguments of jsonb_build_object for the local row's synced columns (alias t)."""
    return sql.SQL(", ").join(sql.SQL("{}, t.{}").format(sql.Literal(c), sql.Identifier(c))
                              for c in cols)


class ConflictRecorder:
    """Finds losing versions for one staged segment and records them; returns counts."""

    def __init__(self, conn: psycopg.Connection, *, peer: str, region: str) -> None:
        self.conn = conn
        self.peer = peer
        self.region = region

    def incoming_losers(self, info: TableInfo, stage: sql.Identifier,
                        cols: tuple[str, ...]) -> int:
        """Record every incoming version that loses to a newer local row or tombstone."""
        q = sql.SQL("""
            SELECT s.{pk}, to_jsonb(s), jsonb_build_object({local}), t.modifiedon, t.sync_origin
            FROM {stage} s JOIN public.{table} t ON t.{pk} = s.{pk}
            WHERE (s.modifiedon, s.sync_origin) < (t.modifiedon, t.sync_origin)
            UNION ALL
            SELECT s.{pk}, to_jsonb(s), jsonb_build_object('deleted', true), tb.modifiedon,
                   tb.origin
            FROM {stage} s JOIN sync.tombstone tb ON tb.tablename = {tname} AND tb.pk = s.{pk}
            WHERE (s.modifiedon, s.sync_origin) < (tb.modifiedon, tb.origin)
              AND tb.modifiedon <> 'infinity'    -- erased: a late version leaves no trace
              AND NOT EXISTS (SELECT 1 FROM public.{table} x WHERE x.{pk} = s.{pk})""").format(
            pk=sql.Identifier(info.pk), stage=stage, table=sql.Identifier(info.name),
            tname=sql.Literal(info.name),
            local=_row_object(cols))
        losers = self.conn.execute(q).fetchall()
        for key, incoming, local, win_mod, win_origin in losers:
            self.record(info.name, key, incoming, local, win_mod, win_origin)
        return len(losers)

    def local_losers(self, info: TableInfo, stage: sql.Identifier, cols: tuple[str, ...],
                     peer_has_seen: str | None) -> int:
        """Record local versions that an incoming, newer version overwrites although the
        peer never saw them (its token for us does not cover their transaction)."""
        # Driven from our own journal: the current local version must be a local change the
        # peer has not applied (all local changes if it never pulls from us). That set is
        # usually tiny (index on origin, txid), so no staged row is probed on the common path.
        seen = (sql.SQL(" AND c.txid >= pg_snapshot_xmin({s}::pg_snapshot)"
                        " AND NOT pg_visible_in_snapshot(c.txid, {s}::pg_snapshot)").format(
                    s=sql.Literal(peer_has_seen)) if peer_has_seen else sql.SQL(""))
        q = sql.SQL("""
            SELECT t.{pk}, jsonb_build_object({local}), to_jsonb(s), s.modifiedon, s.sync_origin
            FROM sync.change_set c
            CROSS JOIN LATERAL unnest(c.pks, c.versions) AS k(pk, versionnumber)
            JOIN public.{table} t ON t.{pk} = k.pk AND t.versionnumber = k.versionnumber
            JOIN {stage} s ON s.{pk} = k.pk
            WHERE c.origin = {region} AND c.tablename = {tname}{seen}
              AND t.sync_origin = {region}
              AND (s.modifiedon, s.sync_origin) > (t.modifiedon, t.sync_origin)""").format(
            pk=sql.Identifier(info.pk), stage=stage, table=sql.Identifier(info.name),
            region=sql.Literal(self.region), tname=sql.Literal(info.name), seen=seen,
            local=_row_object(cols))
        losers = self.conn.execute(q).fetchall()
        for key, local, incoming, win_mod, win_origin in losers:
            self.record(info.name, key, local, incoming, win_mod, win_origin)
        return len(losers)

    def record(self, table: str, key: Any, loser: dict[str, Any],
                         winner: dict[str, Any], win_mod: Any, win_origin: str) -> None:
        """``loser`` is the version that did not survive; ``diff`` goes winner -> loser."""
        diff = DeepDiff(winner, loser, verbose_level=2)
        state.record_conflict(
            self.conn, table=table, key=key, peer=self.peer, winner_origin=win_origin,
            winner_modifiedon=win_mod,
            loser_origin=loser.get("sync_origin") or loser.get("origin"),
            loser_modifiedon=loser.get("modifiedon"), loser_row=loser, diff_json=diff.to_json())

    def losing_deletes(self, info: TableInfo, stage: sql.Identifier) -> int:
        """Incoming deletes older than our row: the delete lost."""
        losers = self.conn.execute(sql.SQL("""
            SELECT d.pk, to_jsonb(d), to_jsonb(t), t.modifiedon, t.sync_origin
            FROM {stage} d JOIN public.{table} t ON t.{pk} = d.pk
            WHERE (d.modifiedon, d.origin) < (t.modifiedon, t.sync_origin)""").format(
            stage=stage, table=sql.Identifier(info.name), pk=sql.Identifier(info.pk))).fetchall()
        for key, incoming, local, win_mod, win_origin in losers:
            local = {k: v for k, v in local.items() if k != "versionnumber"}
            self.record(info.name, key, {**incoming, "deleted": True}, local, win_mod,
                        win_origin)
        return len(losers)
