"""Dead letters retried: re-read from the peer and applied again (part of ``PeerLink``).

Foreign-key and unique violations are usually ordering effects between peers (a parent
authored elsewhere arrives a moment later), so most dead letters heal on a later retry.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import TYPE_CHECKING

from sync.db import state
from sync.records import ReadPlan

if TYPE_CHECKING:
    from sync.link import PeerLink

log = logging.getLogger(__name__)

# Dead letters are looked at no more often than this (their back-off counts in seconds),
# not on every poll: at a 20 ms poll interval that was two queries 50 times a second.
CHECK_EVERY = 1.0


class DeadLetterRetry:
    """The dead-letter part of ``PeerLink`` (a mixin: it uses the link's connections, plan
    and apply)."""

    _dead_letters_checked = -CHECK_EVERY    # monotonic time of the last look

    def retry_dead_letters_due(self: PeerLink) -> tuple[int, int]:
        """``retry_dead_letters()`` once CHECK_EVERY seconds have passed since the last
        look (the daemon calls this after every poll)."""
        now = time.monotonic()
        if now - self._dead_letters_checked < CHECK_EVERY:
            return 0, 0
        self._dead_letters_checked = now
        return self.retry_dead_letters()

    def retry_dead_letters(self: PeerLink, limit: int = 500,
                           ids: list[int] | None = None) -> tuple[int, int]:
        """Re-read dead letters' current rows from the peer and apply them again.

        Without ``ids``: the retryable ones whose back-off has passed. Foreign-key and unique
        violations are usually ordering effects between peers (a parent authored elsewhere
        arrives a moment later), so they heal here; attempts back off exponentially
        (2^attempts seconds, at most 5 minutes). With ``ids`` (an operator's `dlq retry`):
        exactly those of this peer, now. Returns (tried, resolved).
        """
        reader, _ = self._connect()
        assert self.target is not None
        rows = (state.dead_letters_by_id(self.target, self.peer, ids) if ids is not None
                else state.dead_letters_due(self.target, self.peer, limit))
        if not rows:
            self._count_dead_letters()
            return 0, 0
        started = self.target.execute("SELECT clock_timestamp()").fetchone()[0]
        policy = self._policy()
        rules, tables = self._plan_tables(policy)
        wanted = {r[1] for r in rows}
        tables = [t for t in tables if t.name in wanted]
        plan = ReadPlan(keys=[r[2] for r in rows])
        read = Counter[str]()
        with reader.batch() as snap:
            seen = reader.token_for(self.region)
            for page in reader.pages(plan, tables, rules, self.page_size):
                self._apply(page, peer_has_seen=seen, kind="retry", policy_sha=policy.sha)
                for seg in page.segments:
                    read[seg.table] += seg.rows
        self._record_egress(read, snap.token)
        resolved = state.resolve_dead_letters(self.target, [r[0] for r in rows], started)
        if resolved:
            log.info("peer %s: %d of %d dead letters resolved on retry", self.peer, resolved,
                     len(rows))
        self._count_dead_letters()
        return len(rows), resolved

    def _count_dead_letters(self: PeerLink) -> None:
        if self.metrics and self.target is not None:
            n = state.count_dead_letters(self.target, self.peer)
            self.metrics.dead_letters.labels(self.peer, self.region).set(n)
