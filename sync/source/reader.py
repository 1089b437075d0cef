"""Read deltas from a peer's change journal, snapshot-safe.

Why snapshots and not ``versionnumber > last``: a transaction that took version 10 can
commit after one that took version 11; a reader that saw 11 and remembered "11" would
never deliver 10 (invariant 2: no lost change). As in PgQ/Londiste, the token is a transaction
snapshot (``pg_current_snapshot()``): a batch is every journal entry whose transaction is
visible in the reader's snapshot but was not visible in the token's. The batch is read in
one REPEATABLE READ transaction whose snapshot becomes the next token, so the rows read
are exactly the state at that snapshot.

Rows are read by joining the journal's keys to the current rows (several changes of one
row collapse to its state at the snapshot), selecting only the columns the policy lets
this peer send to us. Tables are read parents first for upserts and children first for
deletes, so a page never holds a child whose parent is still to come.

Data travels as COPY, one CopyData message per row, so pages are cut at row boundaries
without parsing, and nothing is decoded in Python on the hot path. Tables whose synced
columns have the same built-in types on both sides travel in binary format (no text
output on the peer, no parsing on our side: staging a page takes half the time); any
other table travels as text, which converts between compatible types.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Iterator, Mapping, Sequence

import psycopg
from psycopg import sql

from sync import versions
from sync.db import origins as registry
from sync.db.catalog import TableInfo
from sync.db.connect import one_row, scalar
from sync.errors import Throttled
from sync.policy.model import TableRule
from sync.records import Origins, Page, Pending, ReadPlan, Segment, SegmentKind, Snapshot
from sync.source.copyout import copy_out
from sync.source.narrow import RANGE_MASK, narrow_columns
from sync.source.rowversion import row_origin, row_version, wire_value
from sync.wire import DELETE_COLUMNS, WITHDRAW_COLUMNS, is_trailer, segment_of, strip_binary_header

log = logging.getLogger(__name__)

# A table whose pending changes reach this share of its rows is read by one scan (see
# SourceReader._join_for). Measured on 50,000 contacts: the two plans break even at ~7%
# (5%: 13.5 ms by key, 14.3 ms by scan; 10%: 23.6 against 19.3; 40%: 53 against 29;
# all of it: 157 against 36), so past 10% the scan is the safe choice.
WIDE_SHARE = 0.1


class SourceReader:
    """Reads batches from one peer over one connection (``prepare_threshold=None``).

    Contract: ``batch()`` opens a REPEATABLE READ, READ ONLY transaction and yields its
    ``Snapshot``; inside it, ``pending()`` and ``pages()`` read consistently at that
    snapshot. Raises ``psycopg.OperationalError`` when the peer is unreachable.
    """

    def __init__(self, conn: psycopg.Connection, *, peer: str, region: str,
                 origins: Origins = "peer", binary: frozenset[str] = frozenset(),
                 names: Mapping[int, str] | None = None, narrow: bool = False) -> None:
        self.conn = conn
        # the owner tells which columns each journal entry changed (protocol 4): a range of
        # updates is read as those columns alone (``narrow_columns``)
        self.narrow = narrow
        # the origin numbers both sides share (sync/db/origins.py): the handshake's, or
        # the owner's own, read on first use
        self._names: Mapping[int, str] | None = names
        self.peer = peer
        self.region = region
        self.origins = origins
        self.binary = binary   # tables read in binary COPY format (see binary_tables)
        # tables the owner sends us with a row filter (from ``grants``): it tells us only of
        # keys it has sent us, and a batch of them is bounded by ``prepare``
        self.owner_filtered: frozenset[str] = frozenset()
        self._wide = False       # the current COPY hashes its keys (see _join_for)
        # a catch-up after a region is retired: read only what ``author`` wrote (any row
        # holding a column version of it, its tombstones), whoever holds it now
        self.author: str | None = None

    def _origin_args(self) -> tuple[str, bool]:
        """(origin, exclude) for the owner's journal functions: see ``_origin_is_ours``."""
        if self.author is not None:
            return self.author, False
        return (self.peer, False) if self.origins == "peer" else (self.region, True)

    def prepare(self, since: str | None) -> str | None:
        """Ask the owner to record which keys of its row-filtered tables it is about to
        send us (migration 0010), in a transaction of its own that commits before the batch
        is read. Returns the bound of the batch (the next token), or None when the owner
        filters nothing for us. Writes nothing, and takes no transaction id, when idle."""
        if not self.owner_filtered:
            return None
        with self.conn.transaction():
            return scalar(self.conn.execute("SELECT sync.egress_prepare(%s, %s, %s)",
                                     (since, *self._origin_args())))

    @contextlib.contextmanager
    def batch(self, bound: str | None = None) -> Iterator[Snapshot]:
        """A REPEATABLE READ, READ ONLY transaction; its snapshot is the next token unless
        ``bound`` (from ``prepare``) ends the batch earlier."""
        with self.conn.transaction():
            self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            token, now = one_row(self.conn.execute(
                "SELECT pg_current_snapshot()::text, clock_timestamp()"))
            self._wide = False
            yield Snapshot(bound or token, now, token)

    def snapshot(self) -> str:
        """The peer's current snapshot, outside any batch: one short round trip."""
        return scalar(self.conn.execute("SELECT pg_current_snapshot()::text"))

    # -- SQL builders (only identifiers and literals; never a policy's raw text) ----------
    def _origin_is_ours_to_read(self, column: sql.Composable) -> sql.Composable:
        """``column`` (an origin) is one this reader pulls: in a mesh only what the peer
        itself authored; from a hub everything but our own (loop prevention)."""
        if self.author is not None:
            return sql.SQL("{} = {}").format(column, sql.Literal(self.author))
        if self.origins == "peer":
            return sql.SQL("{} = {}").format(column, sql.Literal(self.peer))
        return sql.SQL("{} <> {}").format(column, sql.Literal(self.region))

    @property
    def names(self) -> Mapping[int, str]:
        if self._names is None:
            self._names = registry.load(self.conn)
        return self._names

    def _version_is_ours_to_read(self, version: sql.Composable) -> sql.Composable:
        """``_origin_is_ours_to_read`` for a version: its origin number compared, no name
        decoded per row (a name the registry lacks falls back to the name)."""
        numbers = {name: number for number, name in self.names.items()}
        who = self.author or (self.peer if self.origins == "peer" else self.region)
        if who not in numbers:
            return self._origin_is_ours_to_read(versions.name_sql(version, self.names))
        op = "<>" if self.author is None and self.origins != "peer" else "="
        return sql.SQL("{} {} {}").format(versions.number_sql(version), sql.SQL(op),
                                          sql.Literal(numbers[who]))

    def _journal(self, token: str, upto: str | None) -> sql.Composable:
        """The peer's journal as its policy lets us see it (``sync.egress_changes``):
        entries of our origin(s) that the token did not see, up to ``upto``."""
        origin, exclude = self._origin_args()
        return sql.SQL("sync.egress_changes({}, {}, {}, {}) c").format(
            sql.Literal(token), sql.Literal(upto), sql.Literal(origin), sql.Literal(exclude))

    def _keys(self, info: TableInfo, plan: ReadPlan, column: sql.Composable) -> sql.Composable:
        if plan.keys is not None:
            return sql.SQL("{} = ANY({}::uuid[])").format(column, sql.Literal(list(plan.keys)))
        assert plan.token is not None
        return sql.SQL("{col} IN (SELECT k.pk FROM {journal}, unnest(c.pks) AS k(pk)"
                       " WHERE c.tablename = {t})").format(
            col=column, t=sql.Literal(info.name), journal=self._journal(plan.token, plan.upto))

    def _held(self, info: TableInfo, plan: ReadPlan) -> sql.Composable:
        """Keys of an owner-filtered table that the owner recorded as sent to us (held):
        the only rows of it a batch may carry (migration 0010)."""
        if plan.initial:
            keys: sql.Composable = sql.SQL("NULL")
        elif plan.keys is not None:
            keys = sql.SQL("{}::uuid[]").format(sql.Literal(list(plan.keys)))
        else:
            assert plan.token is not None
            keys = sql.SQL("ARRAY(SELECT k.pk FROM {}, unnest(c.pks) AS k(pk)"
                           " WHERE c.tablename = {})").format(
                self._journal(plan.token, plan.upto), sql.Literal(info.name))
        return sql.SQL("SELECT sync.egress_held({}, {})").format(sql.Literal(info.name), keys)

    def upsert_query(self, info: TableInfo, rule: TableRule, plan: ReadPlan,
                     cols: tuple[str, ...] | None = None
                     ) -> tuple[sql.Composed, list[tuple[str, str]]]:
        """The COPY of allowed columns of matching rows (``cols``: some of them, see
        ``narrow_columns``), and the filter values to bind (with ``set_config``) before
        running it."""
        cols = cols or (*rule.wire_columns(info), *rule.version_columns(info))
        if not plan.initial:
            where = self._keys(info, plan, sql.Identifier("t", info.pk))
        elif self.author is not None and info.per_column:   # any column it last wrote
            where = sql.SQL(" OR ").join(
                self._version_is_ours_to_read(sql.Identifier("t", c))
                for c in rule.version_columns(info))
        elif info.per_column:
            where = self._version_is_ours_to_read(row_version(info, rule))
        else:
            where = self._origin_is_ours_to_read(row_origin(info, rule, self.names))
        if info.name in self.owner_filtered:
            where = sql.SQL("{} AND t.{} IN ({})").format(
                where, sql.Identifier(info.pk), self._held(info, plan))
        params: list[tuple[str, str]] = []
        if rule.rows is not None:
            condition, params = rule.rows.to_sql_params("t", info.types)
            where = sql.SQL("{} AND {}").format(where, condition)
        return sql.SQL("COPY (SELECT {cols} FROM public.{table} t WHERE {where}) TO STDOUT").format(
            cols=sql.SQL(", ").join(wire_value(info, rule, c, self.names) for c in cols),
            table=sql.Identifier(info.name), where=where), params

    def delete_query(self, info: TableInfo, plan: ReadPlan) -> sql.Composed:
        """Deletes as tombstones. An initial load sends the peer's tombstones too: the
        joining region may hold the row already (from another peer that has not seen the
        delete yet), and without the tombstone it would keep it forever."""
        if plan.initial:
            keys = self._origin_is_ours_to_read(sql.SQL("tb.origin"))
        else:
            keys = self._keys(info, plan, sql.SQL("tb.pk"))
        return sql.SQL(
            "COPY (SELECT tb.pk, tb.modifiedon, tb.origin FROM sync.egress_tombstone tb"
            " WHERE tb.tablename = {t} AND {keys}"
            " AND NOT EXISTS (SELECT 1 FROM public.{table} x WHERE x.{pk} = tb.pk)) TO STDOUT"
        ).format(t=sql.Literal(info.name), keys=keys, table=sql.Identifier(info.name),
                 pk=sql.Identifier(info.pk))

    # -- reads ---------------------------------------------------------------------------
    def count(self, info: TableInfo, rule: TableRule, plan: ReadPlan) -> int:
        """How many rows ``upsert_query`` would send (binds the filter the same way)."""
        stmt, params = self.upsert_query(info, rule, plan)
        for name, value in params:
            self.conn.execute("SELECT set_config(%s, %s, true)", (name, value))
        inner = stmt.as_string(self.conn).removeprefix("COPY (").removesuffix(") TO STDOUT")
        return scalar(self.conn.execute(f"SELECT count(*) FROM ({inner}) q"))

    def token_for(self, region: str) -> str | None:
        """The peer's own token for ``region``: how much of our journal it has applied."""
        row = self.conn.execute("SELECT token FROM sync.egress_peer_state WHERE peer = %s",
                                (region,)).fetchone()
        return row[0] if row else None

    def grants(self) -> tuple[dict[str, tuple[str, ...]], frozenset[str]] | None:
        """What the peer's policy lets us read (table -> columns, and the tables it filters
        by row), when we connect as the destination role it made for us; None when we
        connect as a role it did not make (the owner or a superuser: then only our own
        policy limits what we read)."""
        # one round trip per poll: no row when we are not a destination role, one row with
        # NULLs when we are one with nothing granted
        rows = self.conn.execute(
            "SELECT g.tablename, g.columns, g.row_filter IS NOT NULL, sync.egress_admit()"
            " FROM sync.egress_me m LEFT JOIN sync.egress_grants g ON true").fetchall()
        if not rows:
            self.owner_filtered = frozenset()
            return None
        if rows[0][3]:
            raise Throttled(f"{self.peer} caps what it serves us per minute; retrying in "
                            f"{rows[0][3]:.0f}s", peer=self.peer, retry_after=rows[0][3])
        self.owner_filtered = frozenset(t for t, _, filtered, _ in rows if filtered)
        return {t: tuple(c) for t, c, _, _ in rows if t is not None}, self.owner_filtered

    def expired(self, token: str) -> bool:
        """Whether the peer pruned its journal past ``token`` (migration 0012's horizon):
        changes we never read are gone from it. False for a peer without retention."""
        try:
            row = self.conn.execute("SELECT pg_snapshot_xmin(%s::pg_snapshot) <= h.pruned_xid"
                                    " FROM sync.egress_horizon h", (token,)).fetchone()
        except psycopg.errors.UndefinedTable:    # a peer not yet migrated to 0012
            return False
        return bool(row and row[0])

    def record_egress(self, rows: dict[str, int], token: str) -> None:
        """Tell the owner what we read in the batch that just ended (its egress log), in a
        transaction of its own: the batch's was read-only."""
        self.conn.execute("SELECT sync.record_egress(%s, %s)",
                          (json.dumps({t: n for t, n in rows.items() if n}), token))

    def pending(self, token: str, tables: Sequence[str], distinct: Sequence[str] = (),
                upto: str | None = None) -> Pending:
        """Changes per table beyond ``token``, the oldest change time, which tables had a
        delete, and each table's size as the planner estimates it; for the tables in
        ``distinct``, also the distinct changed keys (an unnest and a sort: worth it only
        where a row filter makes reads differ from keys)."""
        if not tables:
            return Pending({}, None)
        # protocol 4: the columns the range's updates changed (sync.source.narrow)
        masks = RANGE_MASK if self.narrow else sql.SQL("NULL")
        q = sql.SQL("SELECT c.tablename, sum(cardinality(c.pks)), min(c.changed_at),"
                    " bool_or(c.op = 'd'), (SELECT r.reltuples FROM pg_catalog.pg_class r"
                    "   WHERE r.oid = to_regclass('public.' || quote_ident(c.tablename))),"
                    " {masks} FROM {journal} WHERE c.tablename = ANY({tables})"
                    " GROUP BY c.tablename").format(
            tables=sql.Literal(list(tables)), journal=self._journal(token, upto), masks=masks)
        rows = self.conn.execute(q).fetchall()
        oldest = min((r[2] for r in rows), default=None)
        keys: dict[str, int] = {}
        wanted = [t for t in distinct if any(r[0] == t for r in rows)]
        if wanted:
            q = sql.SQL("SELECT c.tablename, count(DISTINCT k.pk)"
                        " FROM {journal}, unnest(c.pks) AS k(pk)"
                        " WHERE c.tablename = ANY({tables}) GROUP BY c.tablename").format(
                tables=sql.Literal(wanted), journal=self._journal(token, upto))
            keys = {t: n for t, n in self.conn.execute(q).fetchall()}
        return Pending({r[0]: int(r[1]) for r in rows}, oldest, keys,
                       deletes=frozenset(r[0] for r in rows if r[3]),
                       sizes={r[0]: float(r[4]) for r in rows if r[4] is not None},
                       masks={r[0]: int(r[5]) for r in rows if r[5] is not None})

    def withdraw_query(self, info: TableInfo, rule: TableRule,
                       plan: ReadPlan) -> tuple[sql.Composed, list[tuple[str, str]]]:
        """Keys that changed since the token and are no longer ours to hold: no row we may
        read (the owner's row security or our own row filter hides it) and no tombstone.
        The receiver removes its copy; it is not a delete anywhere (invariant 8)."""
        assert plan.token is not None
        visible: sql.Composable = sql.SQL("true")
        params: list[tuple[str, str]] = []
        if rule.rows is not None:
            visible, params = rule.rows.to_sql_params("x", info.types, prefix="regionsync.w")
        if info.name in self.owner_filtered:   # a key the owner marked gone goes, visible or not
            visible = sql.SQL("{} AND x.{} IN ({})").format(
                visible, sql.Identifier(info.pk), self._held(info, plan))
        return sql.SQL(
            "COPY (SELECT DISTINCT k.pk FROM {journal}, unnest(c.pks) AS k(pk)"
            " WHERE c.tablename = {t}"
            " AND NOT EXISTS (SELECT 1 FROM public.{table} x WHERE x.{pk} = k.pk AND {visible})"
            " AND NOT EXISTS (SELECT 1 FROM sync.egress_tombstone tb"
            "                 WHERE tb.tablename = {t} AND tb.pk = k.pk)) TO STDOUT").format(
            t=sql.Literal(info.name), journal=self._journal(plan.token, plan.upto),
            table=sql.Identifier(info.name), pk=sql.Identifier(info.pk),
            visible=visible), params

    def pages(self, plan: ReadPlan, tables: Sequence[TableInfo], rules: dict[str, TableRule],
              page_size: int, pending: Pending | None = None, deletes: bool = True,
              withdraw: frozenset[str] = frozenset()) -> Iterator[Page]:
        """Stream the batch as pages of at least ``page_size`` rows (the last may be smaller).

        Upserts parents first, then deletes and withdrawals children first. ``pending``
        (from ``pending()``, for this range) restricts the read to tables with changes and
        the tombstone read to tables with a delete (a query each saved per batch), and picks
        how each table is read (``_join_for``); ``withdraw`` names the row-filtered tables
        whose keys that left the filter are sent as withdrawals (deltas only).
        """
        steps: list[tuple[SegmentKind, TableInfo]] = [("upsert", t) for t in tables]
        if deletes:
            for t in reversed(tables):
                if pending is None or t.name in pending.deletes:
                    steps.append(("delete", t))
                if t.name in withdraw and plan.token is not None:
                    steps.append(("withdraw", t))
        wide = pending.wide(WIDE_SHARE) if pending is not None else frozenset()
        segments: list[Segment] = []
        in_page = 0
        for kind, info in steps:
            if pending is not None and info.name not in pending.changes:
                continue
            rule = rules[info.name]
            narrow = (narrow_columns(info, rule, pending.masks.get(info.name), plan,
                                     author=self.author, owner_filtered=self.owner_filtered)
                      if kind == "upsert" and pending is not None else None)
            columns = {"upsert": narrow or (*rule.wire_columns(info),
                                            *rule.version_columns(info)),
                       "delete": DELETE_COLUMNS,
                       "withdraw": WITHDRAW_COLUMNS}[kind]
            if kind == "delete":
                stmt = self.delete_query(info, plan)
            else:
                stmt, params = (self.upsert_query(info, rule, plan, narrow) if kind == "upsert"
                                else self.withdraw_query(info, rule, plan))
                for name, value in params:  # bind the row filter's values (never in SQL text)
                    self.conn.execute("SELECT set_config(%s, %s, true)", (name, value))
            self._join_for(kind == "upsert" and info.name in wide)
            binary = info.name in self.binary and kind != "withdraw"
            if binary:
                stmt = sql.SQL("{} (FORMAT binary)").format(stmt)
            # Each row is appended to the page's buffer at once and its message dropped:
            # holding 5,000 small objects per page and joining them cost twice the CPU
            # (fresh memory for every page), on the thread every apply lane waits on.
            buf, rows, first = bytearray(), 0, binary
            message: bytes | memoryview = b""
            cut = functools.partial(segment_of, info.name, kind, columns, binary=binary,
                                    groups=rule.groups, narrow=bool(narrow))
            with contextlib.closing(copy_out(self.conn, stmt)) as messages:
                for message in messages:  # one CopyData message per row
                    if first:
                        message, first = strip_binary_header(bytes(message)), False
                    buf += message
                    rows += 1
                    in_page += 1
                    if in_page >= page_size:
                        segments.append(cut(buf, rows, ends_stream=binary and is_trailer(message)))
                        yield Page(tuple(segments))
                        segments, buf, rows, in_page = [], bytearray(), 0, 0
            ends = binary and rows > 0 and is_trailer(message)
            if rows - ends:
                segments.append(cut(buf, rows, ends_stream=ends))
            in_page -= ends
        self._join_for(False)
        if segments:
            yield Page(tuple(segments))

    def _join_for(self, wide: bool) -> None:
        """Read a wide range (``Pending.wide``) by hashing its keys against one scan of the
        table, a narrow one by an index probe per key.

        The planner cannot tell them apart: the keys come out of a function (the owner's
        journal, behind its security barrier) whose row count it cannot estimate, so it
        always probes. Probing costs ~3 µs a key against ~0.6 µs a row for the scan, so a
        drain of most of a table read 3-4× slower than it needs to. Joins by nested loop are
        switched off for that one COPY; so is JIT, which a disabled node's cost would wake.
        """
        if wide == self._wide:
            return
        self.conn.execute("SET LOCAL enable_nestloop = off; SET LOCAL jit = off" if wide else
                          "SET LOCAL enable_nestloop TO DEFAULT; SET LOCAL jit TO DEFAULT")
        self._wide = wide
