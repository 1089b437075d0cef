"""One pull -> filter -> apply cycle between a peer and the local region.

``PeerLink.run_once()`` reads one snapshot-bounded batch from the peer (``capture``),
already filtered by the policy in force (columns and rows chosen in the peer's SQL), and
applies it page by page (``apply``); the batch's last page carries the new token.

If a batch spans several pages and the process dies in between, the token has not moved
and the batch is read again from the old token: pages already applied are replays, and
last-writer-wins makes a replay a no-op (no row changes, no journal entry, no echo).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import psycopg

from sync.apply.applier import Applier
from sync.apply.deadletters import DeadLetterRetry
from sync.apply.erasure import follow
from sync.apply.expiry import TokenExpiry
from sync.apply.lanes import ApplyLanes
from sync.db.catalog import Schema, introspect
from sync.db.connect import connect
from sync.policy.ingress import Granted, filtered_tables, link_rules
from sync.policy.model import Policy, TableRule
from sync.policy.retract import withdraw_narrowed
from sync.policy.view import policy_view, record_view_change
from sync.records import BatchResult, Page, PageResult, ReadPlan, Streamed
from sync.runtime.metrics import Metrics
from sync.runtime.throttle import TokenBucket
from sync.source.quiet import Idle, QuietPolls
from sync.source.readahead import ReadAhead
from sync.source.reader import SourceReader, binary_tables

log = logging.getLogger(__name__)

TOKEN_REFRESH = 60.0   # seconds between token writes for batches with nothing in them

class PeerLink(DeadLetterRetry, QuietPolls, TokenExpiry):
    """Everything needed to sync one peer into the local region.

    Lifecycle: created closed; ``run_once()`` connects lazily; ``close()`` drops both
    connections (the next ``run_once()`` reconnects). Not thread-safe: one job per peer.
    """

    def __init__(self, *, region: str, peer: str, peer_conninfo: str, local_conninfo: str,
                 policy: Callable[[], Policy], origins: str = "peer", page_size: int = 5000,
                 metrics: Metrics | None = None, stop: threading.Event | None = None,
                 poll_interval: float = 1.0, forward: bool = True,
                 apply_connections: int = 2,
                 max_rows_per_second: float | None = None,
                 resync_on_expiry: bool = True,
                 priorities: dict[str, int] | None = None) -> None:
        self.region = region
        self.peer = peer
        self._peer_conninfo = peer_conninfo
        self._local_conninfo = local_conninfo
        self._policy = policy
        self.origins = origins
        self.forward = forward
        self.page_size = page_size
        self.apply_connections = apply_connections
        self.metrics = metrics
        self.health = metrics.peer(peer, region, poll_interval) if metrics else None
        # Called with (kind, rows applied so far) after each page: progress bars, logs.
        self.progress: Callable[[str, int], None] | None = None
        self._progress_rows = 0
        self._progress_logged = 0.0
        self.stop = stop or threading.Event()
        self.source: psycopg.Connection | None = None
        self.target: psycopg.Connection | None = None
        self.schema: Schema | None = None
        self.reader: SourceReader | None = None
        self.applier: Applier | None = None
        self._lanes: list[Applier] = []     # the applier, then one per extra connection
        self._lane_conns: list[psycopg.Connection] = []
        self._progress_lock = threading.Lock()
        # What the peer grants us (None: we connect as a role it did not make for us), and
        # the tables our policy asks for that it does not send (table -> why).
        self.granted: Granted | None = None
        self.refused: dict[str, str] = {}
        self._throttle = TokenBucket(max_rows_per_second) if max_rows_per_second else None
        self._token_written = -TOKEN_REFRESH   # monotonic time of the last empty-batch token
        self.resync_on_expiry = resync_on_expiry
        self.priorities = priorities or {}   # table -> priority within a batch
        self.reloading = False       # an initial load over copies already here (see _reload)
        self.their_token: str | None = None    # the peer's token for our journal (retention)
        self.expired_at: float | None = None     # when our token last expired (/status)
        self._idle: Idle | None = None     # see QuietPolls

    def _connect(self) -> tuple[SourceReader, Applier]:
        if self.reader is None or self.applier is None or self.source is None \
                or self.source.closed or self.target is None or self.target.closed:
            self.close()
            self.target = connect(self._local_conninfo,
                                  application_name=f"regionsync-{self.region}-apply-{self.peer}")
            self.source = connect(self._peer_conninfo,
                                  application_name=f"regionsync-{self.region}-poll")
            self.schema = introspect(self.target)
            self.reader = SourceReader(self.source, peer=self.peer, region=self.region,
                                       origins=self.origins,  # type: ignore[arg-type]
                                       binary=binary_tables(self.schema, introspect(self.source)))
            self.applier = Applier(self.target, self.schema, peer=self.peer, region=self.region,
                                   journal=self.forward, origins=self.origins)
        return self.reader, self.applier

    def warm(self) -> None:
        """Open every connection and read both schemas now, ahead of the first batch."""
        self._connect()
        self._appliers()

    def _appliers(self) -> list[Applier]:
        """The applier and, for parallel apply, one more per extra local connection."""
        assert self.applier is not None and self.schema is not None
        while len(self._lanes) < self.apply_connections:
            if not self._lanes:
                self._lanes.append(self.applier)
                continue
            conn = connect(self._local_conninfo, application_name=(
                f"regionsync-{self.region}-apply-{self.peer}-{len(self._lanes) + 1}"))
            self._lane_conns.append(conn)
            self._lanes.append(Applier(conn, self.schema, peer=self.peer, region=self.region,
                                       journal=self.forward, origins=self.origins))
        return self._lanes

    def close(self) -> None:
        for conn in (self.source, self.target, *self._lane_conns):
            if conn is not None and not conn.closed:
                conn.close()
        self.source = self.target = None
        self.reader = self.applier = None
        self._idle = None     # a new session proves nothing about what happened meanwhile
        self._lanes, self._lane_conns = [], []

    def _plan_tables(self, policy: Policy):
        """What we read from the peer (``policy.ingress``); what our policy asks for beyond
        the owner's grant is logged once per change and shown on /status."""
        assert self.schema is not None
        rules, notes = link_rules(policy, set(self.schema.tables), self.granted,
                                  peer=self.peer, region=self.region)
        for table, note in notes.items():
            if self.refused.get(table) != note:
                log.warning("peer %s: %s (ingress asks for more than egress grants)", self.peer,
                            note, extra={"peer": self.peer, "table": table})
        self.refused = notes
        return rules, [self.schema.tables[t]
                       for t in self.schema.topo_order(list(rules), self.priorities)]

    def _token_due(self) -> bool:
        """Whether an empty batch should still move the token.

        In an idle mesh every token write takes a transaction id, which changes the
        snapshot the peer reads next, whose token write changes ours: two idle regions
        would write to each other forever (invariant 5). So a batch with nothing in it
        moves the token only every TOKEN_REFRESH seconds (to keep the range a poll scans
        short); in between, an idle poll writes nothing and takes no transaction id.
        """
        return time.monotonic() - self._token_written >= TOKEN_REFRESH

    def _policy_changed(self, stored: dict, view: dict, policy: Policy,
                        rules: dict[str, TableRule], tables: list) -> None:
        """Record what narrowed and remove the copies it no longer allows; backfill what
        widened."""
        assert self.target is not None and self.schema is not None
        widened = record_view_change(self.target, self.peer, stored, view, policy)
        if self.origins == "peer":   # in a hub, `regionsync retract` does this by hand
            withdraw_narrowed(self.target, self.schema, policy, self.region, self.peer, rules)
        if widened:
            self._backfill(policy, rules, [t for t in tables if t.name in widened], view)

    def _backfill(self, policy: Policy, rules: dict[str, TableRule], tables: list,
                  view: dict) -> None:
        """Re-send, under the wider policy, every row the peer authored in ``tables``."""
        assert self.reader is not None and self.applier is not None
        names = ", ".join(t.name for t in tables)
        log.info("policy %s widens what %s sends us (%s): backfilling", policy.sha,
                 self.peer, names)
        started = time.monotonic()
        self.reader.prepare(None)    # the owner records every row it may now send us
        with self.reader.batch() as snap:
            pages = self.reader.pages(ReadPlan(), tables, rules, self.page_size, deletes=False)
            streamed = self._apply_stream(pages, kind="backfill", policy_sha=policy.sha)
            if streamed.complete:
                self._apply(streamed.last or Page(()), kind="backfill", policy_sha=policy.sha,
                            view=view)
        self._record_egress(streamed.read, snap.token)
        log.info("backfill from %s done: %d rows of %s in %.1fs", self.peer, streamed.rows,
                 names, time.monotonic() - started)

    def _apply_stream(self, pages: Iterator[Page], **kw: Any) -> Streamed:
        """Apply ``pages`` while the next one is read (``ReadAhead``), on ``apply_connections``
        local connections (``ApplyLanes``).

        A batch of one page comes back as ``last``, unapplied: the caller applies it with the
        batch's token, data and token in one transaction. In a batch of several pages every
        page is applied here (the last one beside the others) and ``last`` is None: the
        caller commits the token alone, after all of them — the same guarantee (the token
        never covers a row that is not committed; a replay after a crash is a no-op) one
        page-time sooner. Stops early, with ``complete`` False, when asked to stop."""
        read, rows, several = Counter[str](), 0, False
        held: Page | None = None
        assert self.schema is not None
        lanes = ApplyLanes(self._appliers(), self._apply_on, self.schema)
        try:
            with ReadAhead(pages) as ahead:
                for page in ahead:
                    if held is not None:
                        lanes.submit(held, **kw)
                        if self.stop.is_set():  # SIGTERM: pages in flight commit; then stop
                            lanes.barrier()
                            return Streamed(lanes.result, read, rows, None, complete=False)
                    held = page
                    rows += page.rows
                    for seg in page.segments:
                        if seg.kind != "withdraw":   # a withdrawal is a key not sent
                            read[seg.table] += seg.rows
                    several = several or rows > page.rows
            if several and held is not None:
                lanes.submit(held, **kw)
                held = None
            lanes.barrier()
        finally:
            lanes.close()
        return Streamed(lanes.result, read, rows, held, complete=True)

    def _apply_on(self, applier: Applier, page: Page, **kw: Any) -> PageResult:
        """Apply one page with ``applier`` (within the link's rate limit), timing it for the
        metrics."""
        if self._throttle is not None and page.rows:
            self._throttle.take(page.rows)
        started = time.monotonic()
        result = applier.apply_page(page, **kw)
        self._report_progress(kw.get("kind", "delta"), page.rows)
        if self.metrics is not None:
            pair = (self.peer, self.region)
            self.metrics.apply_duration.labels(*pair).observe(time.monotonic() - started)
            if page.rows:
                self.metrics.pages.labels(*pair).inc()
                self.metrics.page_size.labels(*pair).observe(page.rows)
        return result

    def _apply(self, page: Page, **kw: Any) -> PageResult:
        """Apply one page on the main local connection."""
        assert self.applier is not None
        return self._apply_on(self.applier, page, **kw)

    def _report_progress(self, kind: str, rows: int) -> None:
        with self._progress_lock:   # lanes report from their own threads
            self._progress_rows += rows
            done = self._progress_rows
        if self.progress is not None:
            self.progress(kind, done)
        elif kind in ("initial", "backfill") and time.monotonic() - self._progress_logged > 5:
            self._progress_logged = time.monotonic()
            log.info("%s load from %s: %d rows so far", kind, self.peer, self._progress_rows,
                     extra={"peer": self.peer, "rows": self._progress_rows, "kind": kind})

    def run_once(self) -> BatchResult:
        """Read and apply one batch. Raises ``psycopg.Error`` on connection-level failures."""
        started = time.monotonic()
        self._progress_rows = 0
        reader, applier = self._connect()
        policy = self._policy()
        if self._quiet(reader, applier, policy):
            return self._quiet_batch(started)
        self._idle = None
        self.granted = reader.grants()     # the owner may have changed what it sends us
        rules, tables = self._plan_tables(policy)
        assert self.schema is not None
        view = policy_view(self.schema, rules)
        token = applier.read_token()
        if token is not None and reader.expired(token):
            self._expired()
            token = None
        if token is not None:
            stored = applier.read_view()
            if stored is not None and stored != view:
                self._policy_changed(stored, view, policy, rules, tables)
        bound = reader.prepare(token)
        with reader.batch(bound) as snap:
            plan = ReadPlan(token=token, upto=bound)
            pending = None
            if token is not None:
                distinct = [t for t, r in rules.items() if r.rows is not None]
                pending = reader.pending(token, [t.name for t in tables], distinct, bound)
            lag = 0.0
            if pending is not None and pending.oldest_change is not None:
                lag = max(0.0, (snap.source_now - pending.oldest_change).total_seconds())
            if self.health is not None:
                self.health.read(lag, pending.total if pending is not None else 1)
            seen = self.their_token = reader.token_for(self.region)
            kind = "initial" if token is None else "delta"
            if kind == "initial":
                for lane in self._appliers():
                    lane.begin_initial_load([t.name for t in tables])
            streamed = self._apply_stream(
                reader.pages(plan, tables, rules, self.page_size, pending,
                             withdraw=filtered_tables(rules, self.granted)),
                peer_has_seen=seen, kind=kind, policy_sha=policy.sha)
            result, read_rows, rows = streamed.result, streamed.read, streamed.rows
            token_now = token          # ours once this batch is done
            complete = streamed.complete
            if complete and (streamed.last is not None or rows or (
                    snap.token != token and self._token_due())):
                result.add(self._apply(streamed.last or Page(()), token=snap.token, kind=kind,
                                       policy_sha=policy.sha, batch_rows=rows,
                                       peer_has_seen=seen, view=view))
                self._token_written = time.monotonic()   # the refresh counts from any write
                token_now = snap.token
            if complete and token is not None and not rows and pending is not None \
                    and not pending.total and not self.reloading:
                self._idle = Idle(snap.current, token_now, policy.sha)
            if complete and self.target is not None:   # erasures the batch's deletes carried
                follow(self.target, reader.conn, peer=self.peer, region=self.region,
                       bound=snap.token, initial=token is None)
        self._record_egress(read_rows, snap.token)
        if complete and token is None and self.reloading:
            self._reload_done(tables)
        filtered = {}
        if pending is not None:
            filtered = {t: n - read_rows[t] for t, n in pending.keys.items() if n > read_rows[t]}
        batch = BatchResult(
            peer=self.peer, rows=rows, token=snap.token, initial=token is None,
            full=rows >= self.page_size, complete=complete,
            lag_seconds=lag, source_now=snap.source_now,
            applied=dict(result.applied), conflicts=dict(result.conflicts),
            dead_letters=dict(result.dead_letters), filtered=filtered,
            retries=result.retries)
        self._record(batch, time.monotonic() - started)
        counts = {f"{t}.{op}": n for (t, op), n in sorted(batch.applied.items()) if n}
        extra = {"peer": self.peer, "rows": rows, "applied": counts,
                 "conflicts": sum(batch.conflicts.values()),
                 "dead_letters": sum(batch.dead_letters.values())}
        if batch.initial:
            log.info("peer %s: initial load applied %d rows", self.peer, rows, extra=extra)
        elif rows:
            log.info("peer %s: applied batch of %d rows (%s)", self.peer, rows,
                     ", ".join(f"{k}={n}" for k, n in counts.items()), extra=extra)
        return batch

    def _record_egress(self, read: Counter[str], token: str) -> None:
        """Tell the owner what we read (its egress log) when we read as its role for us."""
        if self.granted is not None and any(read.values()):
            assert self.reader is not None
            self.reader.record_egress(dict(read), token)

    def _record(self, batch: BatchResult, seconds: float) -> None:
        m = self.metrics
        if m is None:
            return
        pair = (self.peer, self.region)
        m.poll_duration.labels(*pair).observe(seconds)
        for (table, op), n in batch.applied.items():
            if n:
                m.applied.labels(*pair, table, op).inc(n)
        for table, n in batch.conflicts.items():
            m.conflicts.labels(*pair, table).inc(n)
        for table, n in batch.filtered.items():
            m.filtered.labels(*pair, table, "row_filter").inc(n)
        if batch.complete:
            if self.health is not None:
                self.health.applied()
            m.last_success.labels(*pair).set(time.time())

    def initial_size(self) -> int:
        """Rows an initial load from this peer would send now (for a progress bar's ETA)."""
        reader, _ = self._connect()
        policy = self._policy()
        rules, tables = self._plan_tables(policy)
        total = 0
        with reader.batch():
            for info in tables:
                total += reader.count(info, rules[info.name], ReadPlan())
        return total
