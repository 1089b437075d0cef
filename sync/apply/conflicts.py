"""Who lost last-writer-wins, written to ``sync.conflict_log`` with a DeepDiff.

Three ways to lose: an incoming version older than our row or tombstone; an incoming
delete older than our row; and a local version that an incoming, newer version
overwrites although the peer never saw it (its token for us does not cover our change).
The last one matters most: the region whose edit lost is often the only one that sees it.
"""

from __future__ import annotations

from typing import Any

import psycopg
from cachetools import LRUCache
from deepdiff import DeepDiff
from psycopg import sql

from sync import versions
from sync.apply.merge import SHAPES_KEPT, existence
from sync.db import origins, state
from sync.db.catalog import TableInfo

# journal entries of ours that the peer's token for us (%(seen)s) does not cover
_UNSEEN = sql.SQL(" AND c.txid >= pg_snapshot_xmin(%(seen)s::pg_snapshot)"
                  " AND NOT pg_visible_in_snapshot(c.txid, %(seen)s::pg_snapshot)")


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
        self.namer = origins.Namer(conn)
        # local_column_losers' query per (table, columns, whether the peer has a token):
        # composing it each page cost more Python than running it (the token is a parameter)
        self._local_queries: LRUCache[tuple[str, tuple[str, ...], bool, str], bytes] = \
            LRUCache(maxsize=SHAPES_KEPT)   # per shape, as the applier's upserts

    def _record_columns(self, table: str, key: Any, lost: dict[str, tuple[int, int]],
                        loser_row: dict[str, Any], diff_json: str) -> None:
        """One conflict_log row for the columns that lost (number versions: lost, won)."""
        won = max(w for _, w in lost.values())
        loser = max(v for v, _ in lost.values())
        won_at, loser_at = versions.decode(won)[0], versions.decode(loser)[0]
        describe = self.namer.describe
        state.record_conflict(
            self.conn, table=table, key=key, peer=self.peer,
            winner_origin=self.namer.origin(won), winner_modifiedon=won_at,
            loser_origin=self.namer.origin(loser), loser_modifiedon=loser_at,
            loser_row=loser_row, diff_json=diff_json,
            columns={c: {"lost": describe(v), "won": describe(w)} for c, (v, w) in lost.items()})

    def incoming_losers(self, info: TableInfo, stage: sql.Identifier,
                        cols: tuple[str, ...]) -> int:
        """Record every incoming version that loses to a newer local row or tombstone."""
        if info.per_column:
            return self.incoming_column_losers(info, stage, cols)
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

    def incoming_column_losers(self, info: TableInfo, stage: sql.Identifier,
                               cols: tuple[str, ...]) -> int:
        """Per column: incoming edits older than ours (of the same incarnation, values
        differing), a whole incoming row of an older incarnation, and incoming rows of a
        key deleted here after their insert (a delete wins over every edit of its row)."""
        sent = [c for c in info.versioned if c in cols]
        version_pairs = sql.SQL(", ").join(
            sql.SQL("{}, jsonb_build_array(t.{v}, s.{v}, to_jsonb(t.{c}), to_jsonb(s.{c}))").format(
                sql.Literal(c), v=sql.Identifier(c + "__v"), c=sql.Identifier(c)) for c in sent)
        q = sql.SQL("""
            SELECT s.{pk}, t.sync_base, s.sync_base, jsonb_build_object({version_pairs}), NULL
            FROM {stage} s JOIN public.{table} t ON t.{pk} = s.{pk}
            WHERE s.sync_base <= t.sync_base
            UNION ALL
            SELECT s.{pk}, NULL, s.sync_base, '{{}}'::jsonb,
                   sync.version_of(tb.modifiedon, coalesce(
                       (SELECT o.number FROM sync.origin o WHERE o.region = tb.origin), 0))
            FROM {stage} s JOIN sync.tombstone tb ON tb.tablename = {tname} AND tb.pk = s.{pk}
            WHERE (tb.modifiedon, tb.origin) >= {s_version}
              AND tb.modifiedon <> 'infinity'    -- erased: a late version leaves no trace
              AND NOT EXISTS (SELECT 1 FROM public.{table} x WHERE x.{pk} = s.{pk})""").format(
            pk=sql.Identifier(info.pk), stage=stage, table=sql.Identifier(info.name),
            tname=sql.Literal(info.name), version_pairs=version_pairs,
            s_version=existence(info, "s"))
        n = 0
        for key, t_base, s_base, per_column, tomb in self.conn.execute(q).fetchall():
            lost: dict[str, tuple[int, int]] = {}
            for col, (t_v, s_v, t_val, s_val) in per_column.items():
                mine, theirs = t_v or t_base, s_v or s_base
                if s_base < t_base or (s_v is not None and theirs < mine and t_val != s_val):
                    lost[col] = (theirs, mine)
            if tomb is not None:
                lost = {"(row)": (s_base, tomb)}
            if not lost:
                continue
            self._record_columns(
                info.name, key, lost,
                {c: per_column[c][3] for c in lost if c in per_column} or {"lost_to": "delete"},
                "{}")
            n += 1
        return n

    def local_column_losers(self, info: TableInfo, stage: sql.Identifier,
                            cols: tuple[str, ...], peer_has_seen: str | None) -> int:
        """Per column (migration 0018): the local edits of columns that an incoming, newer
        version overwrites although the peer never saw them. Edits of other columns are
        not conflicts — both survive — so a row records only the columns that lost, with
        both versions; a newer incarnation of the key (inserted again elsewhere) overwrites
        every local edit of the older one."""
        sent = [c for c in info.versioned if c in cols]
        if not sent:
            return 0
        shape = (info.name, cols, peer_has_seen is not None, stage.as_string(None))
        q = self._local_queries.get(shape)
        if q is None:
            version_pairs = sql.SQL(", ").join(
                sql.SQL("{}, jsonb_build_array(t.{v}, s.{v}, to_jsonb(t.{c}), to_jsonb(s.{c}))"
                        ).format(sql.Literal(c), v=sql.Identifier(c + "__v"),
                                 c=sql.Identifier(c)) for c in sent)
            q = sql.SQL("""
                SELECT DISTINCT ON (t.{pk}) t.{pk}, t.sync_base, s.sync_base,
                       jsonb_build_object({version_pairs})
                FROM sync.change_set c
                CROSS JOIN LATERAL unnest(c.pks, c.versions) AS k(pk, versionnumber)
                JOIN public.{table} t ON t.{pk} = k.pk AND t.versionnumber = k.versionnumber
                JOIN {stage} s ON s.{pk} = k.pk
                WHERE c.origin = {region} AND c.tablename = {tname}{seen}
                  AND t.sync_origin = {region} AND s.sync_base >= t.sync_base""").format(
                pk=sql.Identifier(info.pk), stage=stage, table=sql.Identifier(info.name),
                region=sql.Literal(self.region), tname=sql.Literal(info.name),
                seen=_UNSEEN if peer_has_seen else sql.SQL(""), version_pairs=version_pairs
            ).as_bytes(self.conn)
            self._local_queries[shape] = q
        rows = self.conn.execute(q, {"seen": peer_has_seen} if peer_has_seen else None).fetchall()
        ours = self.namer.number_of(self.region) if rows else None
        n = 0
        for key, t_base, s_base, per_column in rows:
            lost: dict[str, tuple[int, int]] = {}
            for col, (t_v, s_v, t_val, s_val) in per_column.items():
                mine, theirs = t_v or t_base, s_v or s_base
                if t_v is None or (t_v & versions.MAX_ORIGIN) != ours or t_val == s_val:
                    continue          # not a local edit of this column, or nothing lost
                if s_base > t_base or theirs > mine:
                    lost[col] = (mine, theirs)
            if not lost:
                continue
            local = {c: per_column[c][2] for c in lost}
            incoming = {c: per_column[c][3] for c in lost}
            self._record_columns(info.name, key, lost, local,
                                 DeepDiff(incoming, local, verbose_level=2).to_json())
            n += 1
        return n

    def local_losers(self, info: TableInfo, stage: sql.Identifier, cols: tuple[str, ...],
                     peer_has_seen: str | None) -> int:
        """Record local versions that an incoming, newer version overwrites although the
        peer never saw them (its token for us does not cover their transaction)."""
        if info.per_column:
            return self.local_column_losers(info, stage, cols, peer_has_seen)
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
