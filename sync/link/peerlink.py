"""One pull -> filter -> apply cycle between a peer and the local region.

``PeerLink.run_once()`` reads one snapshot-bounded batch from the peer, already filtered
by the policy in force (columns and rows chosen in the peer's SQL), and applies it page
by page; the batch's last page carries the new token.

If a batch spans several pages and the process dies in between, the token has not moved
and the batch is read again from the old token: pages already applied are replays, and
last-writer-wins makes a replay a no-op (no row changes, no journal entry, no echo).

The tokens a batch deals in, each under one name:

- ``ours``: our token for the peer — how far we have applied its journal (``None``: an
  initial load is due);
- ``bound``: the end of the range the owner prepared for this batch (its egress
  bookkeeping covers exactly it); the batch's ``snap.token`` is the token it leaves;
- ``peer_has_seen``: the peer's token for *our* journal (what it has applied of us),
  used by apply's conflict detection and by our retention.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sync.apply.erasure import follow
from sync.config import RegionConfig
from sync.db.catalog import TableInfo
from sync.link.connections import LinkConnections, Session
from sync.link.deadletters import DeadLetterRetry
from sync.link.expiry import TokenExpiry
from sync.link.pages import PageSink, Progress
from sync.link.plan import TablePlan
from sync.link.quiet import Idle, QuietPolls
from sync.link.settings import Clock, LinkSettings, monotonic
from sync.policy.ingress import filtered_tables
from sync.policy.model import Policy, TableRule
from sync.policy.retract import withdraw_narrowed
from sync.policy.view import policy_view, record_view_change
from sync.records import (
    BatchKind,
    BatchResult,
    Page,
    PageResult,
    Pending,
    ReadPlan,
    Snapshot,
    Streamed,
)
from sync.runtime.metrics import Metrics, PeerHealth

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Plan:
    policy: Policy
    rules: dict[str, TableRule]
    tables: list[TableInfo]
    view: dict


class PeerLink:
    """Everything needed to sync one peer into the local region.

    Parts: ``conns`` (the connections, reader, applier and lanes), ``plan`` (what we read),
    ``sink`` (how pages are applied), ``quiet`` (idle polls), ``expiry`` (token expiry
    and reloads), ``dead_letters`` (their retry). Lifecycle: created closed; ``run_once()``
    opens the connections; ``close()`` drops them (the next ``run_once()`` reconnects).
    Not thread-safe: one job per peer."""

    def __init__(self, settings: LinkSettings, *, policy: Callable[[], Policy],
                 metrics: Metrics | None = None, stop: threading.Event | None = None,
                 clock: Clock = monotonic) -> None:
        self.settings = settings
        self.peer = settings.peer
        self.region = settings.region
        self._policy = policy
        self.metrics = metrics
        self.health: PeerHealth | None = (
            metrics.peer(settings.peer, settings.region, settings.poll_interval)
            if metrics else None)
        self.stop = stop or threading.Event()
        self.conns = LinkConnections(settings)
        self.plan = TablePlan(settings)
        self.sink = PageSink(self.conns, metrics=metrics, stop=self.stop, clock=clock)
        self.quiet = QuietPolls(clock)
        self.expiry = TokenExpiry(settings, metrics)
        self.dead_letters = DeadLetterRetry(self.conns, self.plan, self.sink, policy,
                                            metrics=metrics, clock=clock)
        self.peer_has_seen: str | None = None   # the peer's token for our journal

    @classmethod
    def from_config(cls, cfg: RegionConfig, peer: str, *, policy: Callable[[], Policy],
                    metrics: Metrics | None = None,
                    stop: threading.Event | None = None) -> PeerLink:
        """The link the daemon runs for ``peer``; commands build theirs the same way."""
        return cls(LinkSettings.from_config(cfg, peer), policy=policy, metrics=metrics,
                   stop=stop)

    # -- lifecycle and seams ----------------------------------------------------------------
    def warm(self) -> None:
        """Open every connection and read both schemas now, ahead of the first batch."""
        self.conns.lanes()

    def close(self) -> None:
        self.conns.close()
        self.quiet.forget()   # a new session proves nothing about what happened meanwhile

    def reload(self) -> None:
        """Make the next initial load a reload: afterwards, copies of the peer's rows that
        it no longer has are removed (`regionsync resync`)."""
        self.expiry.start_reload()

    @property
    def progress(self) -> Progress | None:
        return self.sink.progress

    @progress.setter
    def progress(self, report: Progress | None) -> None:
        """Called with (kind, rows applied so far) after each page: progress bars."""
        self.sink.progress = report

    @property
    def refused(self) -> dict[str, str]:
        return self.plan.refused

    @property
    def expired_at(self) -> float | None:
        return self.expiry.expired_at

    def retry_dead_letters(self, limit: int = 500,
                           ids: list[int] | None = None) -> tuple[int, int]:
        return self.dead_letters.retry(limit, ids)

    def retry_dead_letters_due(self) -> tuple[int, int]:
        return self.dead_letters.retry_due()

    # -- one batch --------------------------------------------------------------------------
    def run_once(self) -> BatchResult:
        """Read and apply one batch. Raises ``psycopg.Error`` on connection-level failures."""
        started = time.monotonic()
        self.sink.new_batch()
        session = self.conns.open()
        policy = self._policy()
        if self.quiet.quiet(session, policy):
            return self._report_quiet(started)
        self.quiet.forget()
        plan = self._plan(session, policy)
        ours = self._expiry_and_view(session, plan)
        bound = session.reader.prepare(ours)
        with self.conns.batch(session, bound) as snap:
            pending = self._pending(session, plan, ours, bound)
            lag = self._lag(snap, pending)
            self.peer_has_seen = session.reader.token_for(self.region)
            kind: BatchKind = "initial" if ours is None else "delta"
            streamed = self._stream(session, plan, ReadPlan(token=ours, upto=bound),
                                    pending, kind)
            result, rows = streamed.result, streamed.rows
            complete = streamed.complete and self._read_whole(session, plan, result,
                                                              streamed, kind)
            if complete:
                committed, now_ours = self._commit_token(plan, ours, snap, streamed.last,
                                                         rows, kind)
                if committed.missing:      # the held page left keys: its token waited
                    complete = self._read_whole(session, plan, committed, streamed, kind)
                    if complete:
                        committed.add(self.sink.apply(
                            Page(()), token=snap.token, kind=kind, policy_sha=plan.policy.sha,
                            batch_rows=rows, view=plan.view))
                result.add(committed)
            if complete:
                self._note_idle(ours, now_ours, snap, rows, pending, plan.policy)
                follow(session.target, session.reader.conn, peer=self.peer,
                       region=self.region, bound=snap.token, initial=ours is None)
        self.plan.record_egress(session, streamed.read, snap.token)
        if complete and ours is None and self.expiry.reloading:
            self.expiry.finish_reload(session, plan.policy, [t.name for t in plan.tables])
        filtered = {}
        if pending is not None:
            filtered = {t: n - streamed.read[t] for t, n in pending.keys.items()
                        if n > streamed.read[t]}
        batch = BatchResult(
            peer=self.peer, rows=rows, token=snap.token, initial=ours is None,
            full=rows >= self.settings.page_size, complete=complete,
            lag_seconds=lag, source_now=snap.source_now,
            applied=dict(result.applied), conflicts=dict(result.conflicts),
            dead_letters=dict(result.dead_letters), filtered=filtered,
            retries=result.retries)
        self._report(batch, time.monotonic() - started)
        return batch

    def _plan(self, session: Session, policy: Policy) -> _Plan:
        self.plan.refresh_grants(session)
        rules, tables = self.plan.tables(policy, session)
        return _Plan(policy, rules, tables, policy_view(session.schema, rules))

    def _expiry_and_view(self, session: Session, plan: _Plan) -> str | None:
        """Our token for this batch: none after an expiry (a reload follows); and what the
        policy's change since the last batch means for copies already here."""
        ours = session.applier.read_token()
        if ours is not None and session.reader.expired(ours):
            self.expiry.expired(session)
            return None
        if ours is not None:
            stored = session.applier.read_view()
            if stored is not None and stored != plan.view:
                self._policy_changed(session, stored, plan)
        return ours

    def _pending(self, session: Session, plan: _Plan, ours: str | None,
                 bound: str | None) -> Pending | None:
        if ours is None:
            return None
        distinct = [t for t, r in plan.rules.items() if r.rows is not None]
        return session.reader.pending(ours, [t.name for t in plan.tables], distinct, bound)

    def _lag(self, snap: Snapshot, pending: Pending | None) -> float:
        lag = 0.0
        if pending is not None and pending.oldest_change is not None:
            lag = max(0.0, (snap.source_now - pending.oldest_change).total_seconds())
        if self.health is not None:
            self.health.read(lag, pending.total if pending is not None else 1)
        return lag

    def _stream(self, session: Session, plan: _Plan, read: ReadPlan,
                pending: Pending | None, kind: BatchKind) -> Streamed:
        if kind == "initial":
            for lane in self.conns.lanes():
                lane.begin_initial_load([t.name for t in plan.tables])
        pages = session.reader.pages(read, plan.tables, plan.rules, self.settings.page_size,
                                     pending, withdraw=filtered_tables(plan.rules,
                                                                       self.plan.granted))
        return self.sink.stream(pages, kind=kind, peer_has_seen=self.peer_has_seen,
                                policy_sha=plan.policy.sha)

    def _read_whole(self, session: Session, plan: _Plan, result: PageResult,
                    streamed: Streamed, kind: BatchKind) -> bool:
        """Read and apply whole, in the batch's snapshot, the rows of narrow pages that
        found no row of their incarnation here (``PageResult.missing``: a key another peer
        created that has not reached us, say); the batch's token waits for them. False
        when asked to stop first (the token must not move)."""
        missing, result.missing = result.missing, {}
        for table, keys in missing.items():
            info = session.schema.tables[table]
            log.debug("peer %s: reading %d rows of %s whole", self.peer, len(keys), table)
            pages = session.reader.pages(ReadPlan(keys=keys), [info], plan.rules,
                                         self.settings.page_size, deletes=False)
            whole = self.sink.stream(pages, kind=kind, peer_has_seen=self.peer_has_seen,
                                     policy_sha=plan.policy.sha)
            result.add(whole.result)
            streamed.read.update(whole.read)
            if not whole.complete:
                return False
            if whole.last is not None:
                result.add(self.sink.apply(whole.last, kind=kind, policy_sha=plan.policy.sha,
                                           peer_has_seen=self.peer_has_seen))
        return True

    def _commit_token(self, plan: _Plan, ours: str | None, snap: Snapshot,
                      last: Page | None, rows: int, kind: BatchKind
                      ) -> tuple[PageResult, str | None]:
        """Apply the held-back page with the batch's token (or the token alone, after a
        batch of several pages); returns what it applied and our token now. An empty batch
        moves the token only when due."""
        if last is None and not rows and (snap.token == ours or not self.quiet.token_due()):
            return PageResult(), ours
        result = self.sink.apply(last or Page(()), token=snap.token, kind=kind,
                                 policy_sha=plan.policy.sha, batch_rows=rows,
                                 peer_has_seen=self.peer_has_seen, view=plan.view)
        self.quiet.token_written()
        return result, snap.token

    def _note_idle(self, ours: str | None, now_ours: str | None, snap: Snapshot, rows: int,
                   pending: Pending | None, policy: Policy) -> None:
        """A delta batch that found nothing: the next polls can be quiet ones."""
        if ours is None or rows or pending is None or pending.total or self.expiry.reloading:
            return
        self.quiet.remember(Idle(snap.current, now_ours, policy.sha))

    def _policy_changed(self, session: Session, stored: dict, plan: _Plan) -> None:
        """Record what narrowed and remove the copies it no longer allows; backfill what
        widened."""
        widened = record_view_change(session.target, self.peer, stored, plan.view,
                                     plan.policy)
        if self.settings.origins == "peer":   # in a hub, `regionsync retract` does this
            withdraw_narrowed(session.target, session.schema, plan.policy, self.region,
                              self.peer, plan.rules)
        if widened:
            self._backfill(session, plan, [t for t in plan.tables if t.name in widened])

    def _backfill(self, session: Session, plan: _Plan, tables: list[TableInfo]) -> None:
        """Re-send, under the wider policy, every row the peer authored in ``tables``."""
        names = ", ".join(t.name for t in tables)
        log.info("policy %s widens what %s sends us (%s): backfilling", plan.policy.sha,
                 self.peer, names)
        started = time.monotonic()
        session.reader.prepare(None)    # the owner records every row it may now send us
        with self.conns.batch(session) as snap:
            pages = session.reader.pages(ReadPlan(), tables, plan.rules,
                                         self.settings.page_size, deletes=False)
            streamed = self.sink.stream(pages, kind="backfill", policy_sha=plan.policy.sha)
            if streamed.complete:
                self.sink.apply(streamed.last or Page(()), kind="backfill",
                                policy_sha=plan.policy.sha, view=plan.view)
        self.plan.record_egress(session, streamed.read, snap.token)
        log.info("backfill from %s done: %d rows of %s in %.1fs", self.peer, streamed.rows,
                 names, time.monotonic() - started)

    def catch_up(self, author: str) -> int:
        """Apply every row and tombstone the peer holds that ``author`` (a region being
        retired) wrote: any row with a column whose version is the author's, merged per
        column, so what a survivor received of the author reaches us too. Our token for
        the peer does not move. Returns the rows read."""
        session = self.conns.open()
        plan = self._plan(session, self._policy())
        session.reader.author = author
        try:
            session.reader.prepare(None)
            with self.conns.batch(session) as snap:
                pages = session.reader.pages(ReadPlan(), plan.tables, plan.rules,
                                             self.settings.page_size)
                streamed = self.sink.stream(pages, kind="backfill", policy_sha=plan.policy.sha)
                if streamed.complete:
                    self.sink.apply(streamed.last or Page(()), kind="backfill",
                                    policy_sha=plan.policy.sha, view=plan.view)
            self.plan.record_egress(session, streamed.read, snap.token)
        finally:
            session.reader.author = None
        return streamed.rows

    # -- reporting ----------------------------------------------------------------------------
    def _report_quiet(self, started: float) -> BatchResult:
        idle = self.quiet.idle
        assert idle is not None
        if self.health is not None:
            self.health.read(0.0, 0)
        batch = BatchResult(peer=self.peer, rows=0, token=idle.token or "", initial=False,
                            full=False, complete=True, lag_seconds=0.0, source_now=None)
        self._record(batch, time.monotonic() - started)
        return batch

    def _report(self, batch: BatchResult, seconds: float) -> None:
        self._record(batch, seconds)
        counts = {f"{t}.{op}": n for (t, op), n in sorted(batch.applied.items()) if n}
        extra = {"peer": self.peer, "rows": batch.rows, "applied": counts,
                 "conflicts": sum(batch.conflicts.values()),
                 "dead_letters": sum(batch.dead_letters.values())}
        if batch.initial:
            log.info("peer %s: initial load applied %d rows", self.peer, batch.rows,
                     extra=extra)
        elif batch.rows:
            log.info("peer %s: applied batch of %d rows (%s)", self.peer, batch.rows,
                     ", ".join(f"{k}={n}" for k, n in counts.items()), extra=extra)

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
        session = self.conns.open()
        rules, tables = self.plan.tables(self._policy(), session)
        with session.reader.batch():
            return sum(session.reader.count(info, rules[info.name], ReadPlan())
                       for info in tables)
