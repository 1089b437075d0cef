"""Apply pages from a peer into the local region database.

One local transaction per page: the rows of the page and, on the batch's last page, the
peer's new token — all or nothing. Each segment is COPYed into a temporary stage table and
merged with one ``INSERT … SELECT … ON CONFLICT (pk) DO UPDATE … WHERE`` some incoming
column wins (MERGE would hash-join a scan of the whole target; ON CONFLICT probes the key).

Conflict rule: last writer wins per column (``sync.apply.merge``), a total order, so every
region converges whichever order the versions arrive in; the same alternate key created in
two regions stays with the first claim (``sync.apply.altkeys``). What lost goes to
``sync.conflict_log``. A row that fails on its own goes to ``sync.dead_letter`` and the rest
of the page commits (``sync.apply.rowfallback``).
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from typing import Any

import psycopg
from cachetools import LRUCache
from psycopg import sql

from sync.apply.altkeys import AlternateKeys
from sync.apply.conflicts import ConflictRecorder
from sync.apply.deletes import Deletes
from sync.apply.merge import (
    NARROW_UPSERT,
    SHAPES_KEPT,
    UPSERT,
    Upsert,
    existence,
    passes,
)
from sync.apply.rowfallback import RowFallback
from sync.db import state
from sync.db.catalog import Schema, TableInfo
from sync.db.connect import scalar
from sync.errors import TokenRegression
from sync.records import BatchKind, Page, PageResult, Segment
from sync.wire import copy_in, ident_list

log = logging.getLogger(__name__)


# Apply waits at most this long for any one lock, then rolls its page back and tries again:
# shorter than PostgreSQL's default deadlock_timeout (1 s), so when apply and an application
# transaction wait for each other, apply is the one that gives way.
LOCK_TIMEOUT = "500ms"
# Lock waits that roll a page back whole; the page is applied again (idempotent).
CONTENTION = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure,
              psycopg.errors.LockNotAvailable)
PAGE_ATTEMPTS = 6
KEY_STRIPES = 256   # as in migration 0005 (uuid_hash(pk) & 255)
# An upsert segment this large shares every stripe of its table without hashing its keys:
# its keys hit all but about 256·e^-4 ≈ 5 stripes anyway, and a shared stripe it does not
# need only makes a delete of that stripe wait for the page, as one of its keys would.
# Hashing and grouping a 5,000-row stage took 1.7 ms of the 3.0 the locks cost.
EVERY_STRIPE_ROWS = 4 * KEY_STRIPES


class Applier:
    """Writes pages from one peer into the local database over one connection.

    Contract: ``apply_page(page, token=...)`` commits the page (and the token when given)
    or raises having changed nothing; ``read_token()`` returns the stored token or None.
    A row-level failure never raises: it lands in ``sync.dead_letter``.
    """

    def __init__(self, conn: psycopg.Connection, schema: Schema, *, peer: str,
                 region: str, journal: bool = True, origins: str = "peer") -> None:
        self.conn = conn
        # Journal applied rows (a hub must: it forwards them); a region that forwards
        # nothing can skip it, like SymmetricDS's sync_on_incoming_batch=false.
        self.journal = journal
        self.schema = schema
        self.peer = peer
        self.region = region
        self.conflicts = ConflictRecorder(conn, peer=peer, region=region)
        self.rows = RowFallback(conn, peer=peer)
        self.altkeys = AlternateKeys(conn, peer=peer)
        self.deletes = Deletes(conn, self.conflicts, self.rows, peer=peer, region=region,
                               origins=origins)
        # Test hook: called with a step name between statements (crash-atomicity tests).
        self.fault_hook: Any = None
        # Tables that were empty (and without tombstones) when an initial load began:
        # their pages can be COPYed straight in (see begin_initial_load).
        self._direct: set[str] = set()
        self._stages: set[str] = set()    # stage tables that exist on this connection
        # per shape of segment (_upsert); shapes change with policies: the recent are kept
        self._upserts: LRUCache[tuple[Any, ...], Upsert] = LRUCache(maxsize=SHAPES_KEPT)
        self._staged: set[str] = set()    # ... and hold rows of the current transaction

    def begin_initial_load(self, tables: list[str]) -> None:
        """Note which tables are empty: an initial load into them needs no merge."""
        self._direct = set()
        for name in tables:
            empty = scalar(self.conn.execute(sql.SQL(
                "SELECT NOT EXISTS (SELECT 1 FROM public.{}) AND NOT EXISTS "
                "(SELECT 1 FROM sync.tombstone WHERE tablename = %s)").format(
                sql.Identifier(name)), (name,)))
            if empty:
                self._direct.add(name)

    def _no_tombstones(self, info: TableInfo) -> bool:
        return scalar(self.conn.execute("SELECT NOT EXISTS (SELECT 1 FROM sync.tombstone "
                                 "WHERE tablename = %s)", (info.name,)))

    def _copy_direct(self, info: TableInfo, seg: Segment, result: PageResult) -> bool:
        """COPY a page straight into an empty table; False (nothing changed) on a clash."""
        try:
            with self.conn.transaction():
                copy_in(self.conn, sql.SQL("public.{}").format(sql.Identifier(info.name)), seg)
        except (psycopg.errors.IntegrityError, psycopg.errors.DataError) as exc:
            # a local insert of the same key, a value our types cannot hold: merge instead
            log.info("peer %s: direct load of %s fell back to merging (%s)", self.peer,
                     info.name, exc.sqlstate)
            self._direct.discard(info.name)
            return False
        result.applied[(info.name, "insert")] += seg.rows
        return True

    # -- token ----------------------------------------------------------------------------
    def read_token(self) -> str | None:
        return state.read_token(self.conn, self.peer)

    def read_view(self) -> dict[str, Any] | None:
        """What the policy let this peer send us when we last applied from it."""
        return state.read_view(self.conn, self.peer)

    def _save_token(self, token: str, rows: int, initial: bool, policy_sha: str | None,
                    view: dict[str, Any] | None) -> None:
        if not state.save_token(self.conn, self.peer, token, rows=rows, initial=initial,
                                policy_sha=policy_sha, view=view):
            raise TokenRegression("token would move backwards; is another regionsync daemon "
                                  "applying to this region?", peer=self.peer)

    # -- pages ----------------------------------------------------------------------------
    def apply_page(self, page: Page, *, policy_sha: str, kind: BatchKind = "delta",
                   token: str | None = None, batch_rows: int = 0,
                   peer_has_seen: str | None = None,
                   view: dict[str, Any] | None = None) -> PageResult:
        """Apply ``page`` in one transaction, with ``token`` (and ``view``) when given.

        ``kind`` is delta, initial, backfill or retry. A backfill re-sends rows we already
        hold at the same version with newly allowed columns, so it also writes equal
        versions. ``peer_has_seen`` is the peer's own token for us (a snapshot of our
        database): a local version whose transaction it does not cover was never seen by
        the peer, so an incoming version that overwrites it is a concurrent edit.
        """
        for attempt in range(1, PAGE_ATTEMPTS + 1):
            self._staged.clear()
            try:
                result = self._apply_page(page, policy_sha=policy_sha, kind=kind, token=token,
                                          batch_rows=batch_rows, peer_has_seen=peer_has_seen,
                                          view=view)
                result.retries = attempt - 1
                return result
            except CONTENTION as exc:
                self._stages.clear()
                if attempt == PAGE_ATTEMPTS:
                    raise
                delay = random.uniform(0, 0.05 * 2 ** attempt)   # full jitter
                log.info("peer %s: page of %d rows gave way (%s); attempt %d in %.2fs",
                         self.peer, page.rows, exc.sqlstate, attempt + 1, delay)
                time.sleep(delay)
            except BaseException:
                self._stages.clear()   # a rolled-back transaction takes the stages it created
                raise
        raise AssertionError("unreachable")

    def _apply_page(self, page: Page, *, policy_sha: str, kind: BatchKind, token: str | None,
                    batch_rows: int, peer_has_seen: str | None,
                    view: dict[str, Any] | None) -> PageResult:
        result = PageResult()
        backfill = kind == "backfill"
        with self.conn.transaction():
            # stamped: our upserts draw versionnumber themselves, so the capture trigger's
            # plpgsql is skipped (migration 0004); a backfill keeps it for its no-op check.
            self.conn.execute("SELECT set_config('regionsync.origin', %s, true), "
                              "set_config('regionsync.journal', %s, true), "
                              "set_config('regionsync.stamped', %s, true), "
                              "set_config('lock_timeout', %s, true)",
                              (self.peer, "on" if self.journal else "off",
                               "off" if backfill else "on", LOCK_TIMEOUT))
            staged: list[tuple[TableInfo, Segment, sql.Identifier | None]] = []
            for seg in page.segments:
                info = self.schema.tables[seg.table]
                direct = kind == "initial" and seg.kind == "upsert" and seg.table in self._direct
                staged.append((info, seg, None if direct else self._stage(info, seg, result)))
            self._lock_keys(staged)
            for info, seg, stage in staged:
                self._step("segment")
                if stage is None:
                    # decided before the locks: a delete (from another peer) committed
                    # since then leaves a tombstone that a straight COPY would ignore
                    if self._no_tombstones(info) and self._copy_direct(info, seg, result):
                        continue
                    self._direct.discard(info.name)
                    stage = self._stage(info, seg, result)
                if seg.kind == "withdraw":
                    self.deletes.withdraw(info, stage, result)
                elif seg.kind == "upsert":
                    if not backfill:
                        result.conflicts[info.name] += self.conflicts.local_losers(
                            info, stage, seg.columns, peer_has_seen)
                    pending, collided = self.altkeys.prepare(info, stage, seg.columns)
                    result.conflicts[info.name] += collided
                    self._upsert(info, seg, stage, result, backfill=backfill)
                    self.altkeys.settle(pending)
                else:
                    self.deletes.delete(info, stage, result)
            self._step("token")
            if result.missing:    # the link reads those rows whole, then moves the token
                token = None
            if token is not None:
                self._save_token(token, batch_rows, kind == "initial", policy_sha, view)
            elif view is not None:
                state.save_view(self.conn, self.peer, view)
            if page.rows or token is not None:
                state.log_batch(self.conn, self.peer, kind=kind, rows=page.rows,
                                policy_sha=policy_sha, token=token)
        return result

    def _lock_keys(self, staged: list[tuple[TableInfo, Segment, sql.Identifier | None]]
                   ) -> None:
        """Take the page's key-stripe locks, all at once in one global order (migration 0005).

        Deletes take their stripes exclusively, upserts share theirs (as the application's
        inserts do): a delete and an insert of one key are never decided at once, and every
        decision after this sees whatever the other committed. A segment COPYed straight
        into an empty table shares every stripe of its table (its keys are not known yet),
        as does an upsert segment of ``EVERY_STRIPE_ROWS`` or more (they would be hit).
        """
        parts: list[sql.Composable] = []
        for info, seg, stage in staged:
            space = sql.SQL("sync.key_lock_space({})").format(sql.Literal(info.name))
            if stage is None or (seg.kind == "upsert" and seg.rows >= EVERY_STRIPE_ROWS):
                parts.append(sql.SQL("SELECT {}, g, false FROM generate_series(0, {}) g").format(
                    space, sql.Literal(KEY_STRIPES - 1)))
                continue
            key = info.pk if seg.kind == "upsert" else "pk"
            parts.append(sql.SQL("SELECT {}, uuid_hash({}) & {}, {} FROM {}").format(
                space, sql.Identifier(key), sql.Literal(KEY_STRIPES - 1),
                sql.Literal(seg.kind != "upsert"), stage))
        if not parts:
            return
        self.conn.execute(sql.SQL("""
            SELECT sync.lock_key_stripes(array_agg(sp ORDER BY sp, st),
                                         array_agg(st ORDER BY sp, st),
                                         array_agg(x ORDER BY sp, st))
            FROM (SELECT sp, st, bool_or(x) AS x FROM ({}) u(sp, st, x) GROUP BY 1, 2) g""").format(
            sql.SQL(" UNION ALL ").join(parts)))
        self._step("locked")

    def _step(self, name: str) -> None:
        if self.fault_hook is not None:
            self.fault_hook(name)

    def _stage(self, info: TableInfo, seg: Segment, result: PageResult) -> sql.Identifier:
        digest = hashlib.sha1(",".join(seg.columns).encode()).hexdigest()[:10]
        base = key = f"rs_{seg.kind}_{info.name}_{digest}"
        # Stage tables live as long as the connection and empty themselves at commit (ON
        # COMMIT DELETE ROWS), so an existing one needs neither CREATE nor TRUNCATE — a
        # TRUNCATE would give it a new file every page. A page stages every segment before
        # applying any, so a second segment of one table and kind (never on the normal
        # path) gets a stage of its own.
        n = 1
        while key in self._staged:
            n += 1
            key = f"{base}_{n}"
        name = sql.Identifier(key)
        if key not in self._stages:
            self._create_stage(name, info, seg)
            self._stages.add(key)
        self._staged.add(key)
        try:
            with self.conn.transaction():
                copy_in(self.conn, name, seg)
        except psycopg.errors.DataError as exc:
            if seg.binary:   # same built-in types on both sides: cannot be a value's fault
                raise
            log.info("peer %s: staging %s of %s failed (%s); staging row by row", self.peer,
                     seg.kind, info.name, exc.sqlstate)
            self.rows.stage_alone(name, info, seg, result)
        self._step("staged")
        return name

    def _create_stage(self, name: sql.Identifier, info: TableInfo, seg: Segment) -> None:
        if seg.kind == "upsert":
            self.conn.execute(sql.SQL(
                "CREATE TEMP TABLE IF NOT EXISTS {} ON COMMIT DELETE ROWS AS "
                "SELECT {} FROM public.{} WITH NO DATA").format(
                name, ident_list(seg.columns), sql.Identifier(info.name)))
        else:
            self.conn.execute(sql.SQL(
                "CREATE TEMP TABLE IF NOT EXISTS {} (pk uuid, modifiedon timestamptz, origin text)"
                " ON COMMIT DELETE ROWS").format(name))

    # -- upserts --------------------------------------------------------------------------
    def _upsert(self, info: TableInfo, seg: Segment, stage: sql.Identifier,
                result: PageResult, *, backfill: bool = False) -> None:
        table, pk, cols = sql.Identifier(info.name), sql.Identifier(info.pk), seg.columns
        t_version = existence(info, "t")
        # one Upsert per shape of segment, kept (see sync.apply.merge.Upsert); the column
        # bits of its journal masks are part of the shape
        shape = (info, tuple(info.attnums.items()), cols, backfill, seg.groups, self.journal,
                 seg.narrow, stage.as_string(None))
        statements = self._upserts.get(shape)
        if statements is None:
            # EXCLUDED.versionnumber is the proposed row's default: the sequence's next
            # value. (A backfill runs the trigger instead, which keeps the version of a
            # no-op update.)
            stamped = () if backfill else ("versionnumber",)
            statements = Upsert(passes(info, cols, stamped, backfill=backfill,
                                       groups=seg.groups, journal=self.journal,
                                       narrow=seg.narrow),
                                table=table, cols=ident_list(cols),
                                scols=ident_list(cols, "s"), stage=stage,
                                tname=sql.Literal(info.name), pk=pk,
                                s_version=existence(info, "s"),
                                template=NARROW_UPSERT if seg.narrow else UPSERT)
            self._upserts[shape] = statements

        # A row the application deleted while ON CONFLICT waited for it is re-inserted by
        # the upsert (the conflict is gone) although its tombstone, committed meanwhile, is
        # newer: this later statement sees that tombstone and takes the row out again.
        recheck = sql.SQL("""
            DELETE FROM public.{table} t USING {stage} s, sync.tombstone tb
            WHERE {one} AND t.{pk} = s.{pk} AND tb.tablename = {tname} AND tb.pk = s.{pk}
              AND (tb.modifiedon, tb.origin) >= {t_version}""")

        def run(one: sql.Composable | None, params: dict[str, Any] | None = None
                ) -> tuple[int, int]:
            if seg.narrow:   # the stage outside, by key: key order, an index probe a row
                self.conn.execute("SET LOCAL enable_hashjoin = off; "
                                  "SET LOCAL enable_mergejoin = off")
                written = statements.run(self.conn, one, params)
                self.conn.execute("SET LOCAL enable_hashjoin TO DEFAULT; "   # (an error rolls
                                  "SET LOCAL enable_mergejoin TO DEFAULT")   # both back)
                missing.extend(written.missing)   # read whole before the batch's token
                return written.inserted, written.updated
            ins, upd, _ = statements.run(self.conn, one, params)
            if ins:
                ins -= self.conn.execute(recheck.format(
                    table=table, stage=stage, one=one or sql.SQL("true"), pk=pk,
                    tname=sql.Literal(info.name),
                    t_version=t_version), params).rowcount
            return ins, upd

        def count(ins: int, upd: int) -> None:
            result.applied[(info.name, "insert")] += ins
            result.applied[(info.name, "update")] += upd

        missing: list[Any] = []     # a narrow segment's keys with no row to update here
        done_before = (result.applied[(info.name, "insert")] + result.applied[(info.name, "update")]
                       + result.dead_letters[info.name])
        one_key = sql.SQL("s.{} = %(key)s").format(pk)
        self.rows.bulk_or_rows(info, stage, seg.kind, lambda: count(*run(None)),
                               lambda key: count(*run(one_key, {"key": key})), result)
        self._step("upserted")
        done = (result.applied[(info.name, "insert")] + result.applied[(info.name, "update")]
                + result.dead_letters[info.name]) - done_before + len(missing)
        if missing:
            result.missing.setdefault(info.name, []).extend(missing)
        # Rows not written: replays of a version we hold, or versions that lost. Rows that
        # lost are unchanged by the upsert, so they are found afterwards — and only when
        # something was skipped (never on the common path).
        skipped = max(0, seg.rows - done)
        result.skipped[info.name] += skipped
        if skipped and not backfill:
            result.conflicts[info.name] += self.conflicts.incoming_losers(info, stage, cols)

__all__ = ["Applier"]
