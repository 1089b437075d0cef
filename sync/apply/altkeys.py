"""Alternate keys created in two regions at once: the first claim keeps the key, the later
copy is kept under a marked key, and every region decides the same.

An alternate key is a unique index besides the primary key (Dataverse's alternate keys:
an account number, an order number). Two regions that create the same business key
concurrently hold two rows with different primary keys; last-writer-wins cannot merge
them, and the unique index would turn the second into a dead letter that no retry heals.

The rule (docs/design.md, "Alternate keys"): the row that *claimed* the key first keeps
it. A row's claim is the newest version among its key columns (per-column versions,
migration 0018: the insert's base for a key never edited since), with the primary key as
the tie-break, so every region orders the two rows alike whichever arrives first. The
other row stays, with every value and every child it has, under a marked key
(``<key> ~dup-<its primary key>``): nothing is lost, no foreign key breaks, and a person
merges the two (``regionsync conflicts list`` shows each). The mark is written as a local
edit of the resolving region, journaled under its own origin, so it travels like any
edit: a region that never saw the collision (the first copy was renamed meanwhile) still
ends with the same mark, by last-writer-wins, and an edit of the key made later wins over
the mark.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from sync import versions
from sync.apply.merge import existence
from sync.db import origins, state
from sync.db.catalog import AlternateKey, TableInfo

log = logging.getLogger(__name__)

MARK = " ~dup-"          # the mark a later copy keeps: "<key> ~dup-<pk>"
PENDING = " ~new-"       # what it holds inside the page transaction, until the mark is ours
SUFFIX_LENGTH = len(MARK) + 36   # and the uuid


@dataclass
class Pending:
    """Incoming rows that lost their key: stored under a placeholder by the upsert, then
    given the mark as this region's edit (``settle``)."""
    info: TableInfo
    marks: list[tuple[str, list[Any]]] = field(default_factory=list)   # (column, keys)


def markable(info: TableInfo, key: AlternateKey) -> str | None:
    """The key's column that carries the mark: its first text column with room for it."""
    for c in key.columns:
        ty = info.types.get(c, "")
        if ty == "text":
            return c
        m = re.fullmatch(r"character varying\((\d+)\)", ty)
        if m and int(m.group(1)) > SUFFIX_LENGTH + 1:
            return c
    return None


def _mark(info: TableInfo, col: str, value: sql.Composable, pk: sql.Composable,
          suffix: str) -> sql.Composable:
    m = re.fullmatch(r"character varying\((\d+)\)", info.types.get(col, ""))
    kept = (value if m is None else
            sql.SQL("left({}, {})").format(value, sql.Literal(int(m.group(1)) - SUFFIX_LENGTH)))
    return sql.SQL("{} || {} || {}::text").format(kept, sql.Literal(suffix), pk)


def _claim(alias: str, columns: tuple[str, ...]) -> sql.Composable:
    """When the row took the key: the newest version among the key's columns."""
    return sql.SQL("greatest({})").format(sql.SQL(", ").join(
        sql.SQL("coalesce({}, {})").format(sql.Identifier(alias, c + "__v"),
                                           sql.Identifier(alias, "sync_base"))
        for c in columns))


class AlternateKeys:
    """Resolves the alternate-key collisions of one staged segment (the applier's page
    transaction, its settings) before the upsert, and settles the marks after it."""

    def __init__(self, conn: psycopg.Connection, *, peer: str) -> None:
        self.conn = conn
        self.peer = peer
        self.namer = origins.Namer(conn)

    def prepare(self, info: TableInfo, stage: sql.Identifier,
                cols: tuple[str, ...]) -> tuple[Pending, int]:
        """Mark local rows that lose their key to an incoming row; give incoming rows that
        lose a placeholder. Returns what ``settle`` finishes, and how many collided."""
        pending = Pending(info)
        collided = 0
        if not info.per_column:
            return pending, 0
        for key in info.alternate_keys:
            col = markable(info, key)
            if col is None or not all(c in cols and c + "__v" in cols for c in key.columns):
                continue     # a key the peer does not send cannot collide through it
            collided += self._vacate(info, key, col, stage)
            found = self._collisions(info, key, stage)
            if not found:
                continue
            collided += len(found)
            local = [f for f in found if not f["incoming_loses"]]
            incoming = [f for f in found if f["incoming_loses"]]
            for f in found:
                self._record(info, key, f)
            if local:
                self._local_edit(self._guarded(info, col, _mark(
                    info, col, sql.Identifier("t", col), sql.Identifier("t", info.pk), MARK)),
                    ([f["opk"] for f in local], [f["orow"][col] for f in local]))
            if incoming:
                keys = [f["spk"] for f in incoming]
                self.conn.execute(sql.SQL("UPDATE {s} SET {c} = {p} WHERE {pk} = ANY(%s)").format(
                    s=stage, c=sql.Identifier(col), pk=sql.Identifier(info.pk),
                    p=_mark(info, col, sql.Identifier(col), sql.Identifier(info.pk), PENDING)),
                    (keys,))
                pending.marks.append((col, keys))
            log.info("peer %s: %d %s row(s) collided on alternate key %s; the later copy "
                     "keeps a marked key (regionsync conflicts list)", self.peer, len(found),
                     info.name, key.name)
        return pending, collided

    def settle(self, pending: Pending) -> None:
        """Give the incoming rows that lost their key the mark, as this region's edit."""
        info = pending.info
        for col, keys in pending.marks:
            c = sql.Identifier(col)
            self._local_edit(sql.SQL(
                "UPDATE public.{t} SET {c} = replace({c}, {p}, {m}) "
                "WHERE {pk} = ANY(%s) AND strpos({c}, {p}) > 0").format(
                t=sql.Identifier(info.name), c=c, pk=sql.Identifier(info.pk),
                p=sql.Literal(PENDING), m=sql.Literal(MARK)), (keys,))

    # -- internals ------------------------------------------------------------------------
    def _vacate(self, info: TableInfo, key: AlternateKey, col: str,
                stage: sql.Identifier) -> int:
        """Local rows that give their key up in this page, to another row of the page (a
        copy marked elsewhere, two keys swapped): a placeholder first, so that the upsert,
        which checks the unique index row by row, never sees two rows holding one key.
        The upsert then writes each row's incoming key over the placeholder. A local copy
        that gives its key up for the mark another region gave it lost a collision: on
        record here too, where its region's users look."""
        pk = sql.Identifier(info.pk)
        cur = self.conn.execute(sql.SQL("""
            SELECT o.{pk} AS opk, s.{pk} AS spk, {cs} AS sv, {co} AS ov,
                   strpos(s2.{c}, {mark} || o.{pk}::text) > 0 AS marked,
                   to_jsonb(s) AS srow, to_jsonb(o) AS orow
            FROM {stage} s2 JOIN public.{t} o ON s2.{pk} = o.{pk}
            JOIN {stage} s ON s.{pk} <> o.{pk} AND {same}
            WHERE ({s2k}) IS DISTINCT FROM ({ok})
              AND (s2.sync_base > o.sync_base OR {cs2} > {co})""").format(
            t=sql.Identifier(info.name), c=sql.Identifier(col), stage=stage, pk=pk,
            mark=sql.Literal(MARK),
            s2k=sql.SQL(", ").join(sql.Identifier("s2", c) for c in key.columns),
            ok=sql.SQL(", ").join(sql.Identifier("o", c) for c in key.columns),
            cs=_claim("s", key.columns), cs2=_claim("s2", key.columns),
            co=_claim("o", key.columns),
            same=sql.SQL(" AND ").join(sql.SQL("s.{c} = o.{c}").format(c=sql.Identifier(c))
                                       for c in key.columns)))
        names = [d.name for d in cur.description or []]
        moving = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        if not moving:
            return 0
        lost = [f for f in moving if f["marked"]]
        for f in lost:
            self._record(info, key, {**f, "incoming_loses": False})
        self.conn.execute(self._guarded(info, col, _mark(
            info, col, sql.Identifier("t", col), sql.Identifier("t", info.pk), PENDING)),
            ([f["opk"] for f in moving], [f["orow"][col] for f in moving]))
        return len(lost)

    @staticmethod
    def _guarded(info: TableInfo, col: str, value: sql.Composable) -> sql.Composed:
        """An UPDATE of ``col`` to ``value`` for the rows (keys, values seen) still holding
        the value seen: another link applying to this region at the same moment may have
        changed the row (marked it, or written a newer key) while this one waited for its
        lock, and a mark must never be made of a mark, nor a newer key overwritten."""
        return sql.SQL("UPDATE public.{t} t SET {c} = {v} FROM unnest(%s::uuid[], %s::text[]) "
                       "AS seen(pk, value) WHERE t.{pk} = seen.pk AND t.{c} = seen.value").format(
            t=sql.Identifier(info.name), c=sql.Identifier(col), v=value,
            pk=sql.Identifier(info.pk))

    def _collisions(self, info: TableInfo, key: AlternateKey,
                    stage: sql.Identifier) -> list[dict[str, Any]]:
        """Staged rows whose key would be written and equals another local row's, that row
        not giving it up in this same page."""
        pk = sql.Identifier(info.pk)
        same = sql.SQL(" AND ").join(sql.SQL("o.{c} = s.{c}").format(c=sql.Identifier(c))
                                     for c in key.columns)
        moved = sql.SQL("({}) IS DISTINCT FROM ({})").format(
            sql.SQL(", ").join(sql.Identifier("s2", c) for c in key.columns),
            sql.SQL(", ").join(sql.Identifier("o", c) for c in key.columns))
        q = sql.SQL("""
            SELECT s.{pk} AS spk, o.{pk} AS opk, {cs} AS sv, {co} AS ov,
                   ({cs}, s.{pk}) > ({co}, o.{pk}) AS incoming_loses,
                   to_jsonb(s) AS srow, to_jsonb(o) AS orow
            FROM {stage} s
            JOIN public.{t} o ON {same} AND o.{pk} <> s.{pk}
            LEFT JOIN public.{t} cur ON cur.{pk} = s.{pk}
            WHERE CASE WHEN cur.{pk} IS NULL
                       THEN NOT EXISTS (SELECT 1 FROM sync.tombstone tb
                                        WHERE tb.tablename = {tname} AND tb.pk = s.{pk}
                                          AND (tb.modifiedon, tb.origin) >= {exist})
                       ELSE cur.sync_base < s.sync_base
                            OR (cur.sync_base = s.sync_base AND {cs} > {ccur}) END
              AND NOT EXISTS (SELECT 1 FROM {stage} s2
                              WHERE s2.{pk} = o.{pk} AND {moved}
                                AND (s2.sync_base > o.sync_base OR {cs2} > {co}))
            ORDER BY s.{pk}""").format(
            pk=pk, stage=stage, t=sql.Identifier(info.name), same=same, moved=moved,
            tname=sql.Literal(info.name), exist=existence(info, "s"),
            cs=_claim("s", key.columns), co=_claim("o", key.columns),
            ccur=_claim("cur", key.columns), cs2=_claim("s2", key.columns))
        cur = self.conn.execute(q)
        names = [d.name for d in cur.description or []]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def _record(self, info: TableInfo, key: AlternateKey, f: dict[str, Any]) -> None:
        """The losing copy on record, whole (its values before the mark), with both claims."""
        lost, won = (f["sv"], f["ov"]) if f["incoming_loses"] else (f["ov"], f["sv"])
        loser, winner = (f["srow"], f["orow"]) if f["incoming_loses"] else (f["orow"], f["srow"])
        synced = [c for c in info.columns if c in loser and c in winner]
        diff = {c: {"lost": loser[c], "won": winner[c]} for c in synced
                if loser[c] != winner[c] and c != info.pk}
        state.record_conflict(
            self.conn, table=info.name, key=loser[info.pk], peer=self.peer,
            winner_origin=self.namer.origin(won), winner_modifiedon=versions.decode(won)[0],
            loser_origin=self.namer.origin(lost), loser_modifiedon=versions.decode(lost)[0],
            loser_row={c: loser[c] for c in synced},
            diff_json=json.dumps({"alternate_key": diff}),
            columns={c: {"lost": self.namer.describe(lost), "won": self.namer.describe(won)}
                     for c in key.columns},
            reason=f"alternate key {key.name}: claimed first by {winner[info.pk]}; "
                   f"this copy keeps a marked key")

    def _local_edit(self, stmt: sql.Composed, params: tuple[Any, ...]) -> None:
        """Run ``stmt`` as this region's own write (its version, its journal entry), inside
        the page transaction, then go back to the apply settings it had."""
        saved = self.conn.execute(
            "SELECT current_setting('regionsync.origin', true), "
            "current_setting('regionsync.stamped', true), "
            "current_setting('regionsync.journal', true), "
            "set_config('regionsync.origin', '', true), "
            "set_config('regionsync.stamped', '', true), "
            "set_config('regionsync.journal', '', true)").fetchone()
        assert saved is not None
        # No try/finally: if the edit fails, the page transaction is aborted (its rollback
        # takes these transaction-local settings with it), and a restore there would only
        # raise "current transaction is aborted" in place of the edit's own error — which
        # turned a deadlock, retried as contention, into a stopped link.
        self.conn.execute(stmt, params)
        self.conn.execute("SELECT set_config('regionsync.origin', %s, true), "
                          "set_config('regionsync.stamped', %s, true), "
                          "set_config('regionsync.journal', %s, true)",
                          tuple(v or "" for v in saved[:3]))


__all__ = ["AlternateKeys", "Pending", "markable"]
