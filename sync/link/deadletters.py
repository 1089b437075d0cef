"""Dead letters retried: re-read from the peer and applied again.

Foreign-key and unique violations are usually ordering effects between peers (a parent
authored elsewhere arrives a moment later), so most dead letters heal on a later retry;
attempts back off exponentially (2^attempts seconds, at most 5 minutes). One that fails
``STUCK_AFTER`` times in a row for the same reason is marked stuck (sync/db/state.py):
retried hourly, counted apart, and `regionsync dlq list` says what would heal it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from sync.db import dead_letters, state
from sync.link.connections import LinkConnections
from sync.link.pages import PageSink
from sync.link.plan import TablePlan
from sync.link.settings import Clock, monotonic
from sync.policy.model import Policy
from sync.records import ReadPlan
from sync.runtime.metrics import Metrics

log = logging.getLogger(__name__)

# Dead letters are looked at no more often than this (their back-off counts in seconds),
# not on every poll: at a 20 ms poll interval that was two queries 50 times a second.
CHECK_EVERY = 1.0


class DeadLetterRetry:
    def __init__(self, conns: LinkConnections, plan: TablePlan, sink: PageSink,
                 policy: Callable[[], Policy], *, metrics: Metrics | None,
                 clock: Clock = monotonic) -> None:
        self.conns = conns
        self.plan = plan
        self.sink = sink
        self.policy = policy
        self.metrics = metrics
        self.clock = clock
        self._checked = clock() - CHECK_EVERY     # monotonic time of the last look

    def retry_due(self) -> tuple[int, int]:
        """`retry` once CHECK_EVERY seconds have passed since the last look (the daemon
        calls this after every poll)."""
        now = self.clock()
        if now - self._checked < CHECK_EVERY:
            return 0, 0
        self._checked = now
        return self.retry()

    def retry(self, limit: int = 500, ids: list[int] | None = None) -> tuple[int, int]:
        """Re-read dead letters' current rows from the peer and apply them again.

        Without ``ids``: the retryable ones whose back-off has passed. With ``ids`` (an
        operator's `dlq retry`): exactly those of this peer, now. Returns (tried,
        resolved)."""
        session = self.conns.open()
        peer, region = self.conns.settings.peer, self.conns.settings.region
        target = session.target
        rows = (dead_letters.dead_letters_by_id(target, peer, ids) if ids is not None
                else dead_letters.dead_letters_due(target, peer, limit))
        if not rows:
            self._count()
            return 0, 0
        started = state.now(target)
        policy = self.policy()
        rules, tables = self.plan.tables(policy, session)
        wanted = {r[1] for r in rows}
        tables = [t for t in tables if t.name in wanted]
        read = Counter[str]()
        with self.conns.batch(session) as snap:
            seen = session.reader.token_for(region)
            for page in session.reader.pages(ReadPlan(keys=[r[2] for r in rows]), tables,
                                             rules, self.conns.settings.page_size):
                self.sink.apply(page, peer_has_seen=seen, kind="retry", policy_sha=policy.sha)
                for seg in page.segments:
                    read[seg.table] += seg.rows
        self.plan.record_egress(session, read, snap.token)
        resolved = dead_letters.resolve_dead_letters(target, [r[0] for r in rows], started)
        if resolved:
            log.info("peer %s: %d of %d dead letters resolved on retry", peer, resolved,
                     len(rows))
        self._count()
        return len(rows), resolved

    def _count(self) -> None:
        session = self.conns.session
        if self.metrics is not None and session is not None:
            s = self.conns.settings
            n, stuck = dead_letters.count_dead_letters(session.target, s.peer)
            self.metrics.dead_letters.labels(s.peer, s.region).set(n)
            self.metrics.dead_letters_stuck.labels(s.peer, s.region).set(stuck)
