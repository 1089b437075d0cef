"""A circuit breaker per peer link.

Back-off alone keeps retrying a peer that is down at a growing interval; the breaker
makes the state explicit and cheap: after ``failures`` consecutive failed batches it
*opens* (no attempt at all, ``/status`` and ``regionsync_breaker_state`` say so), then
lets one probe through (*half-open*), and that probe's outcome closes it or opens it
again. The first probe comes after ``first_probe_seconds`` (a peer back from a planned
restart resumes within seconds, not a minute); each failed probe doubles the wait, up to
``open_seconds``. Only transient failures count; a link stopped by a fatal error has its
own state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any


class State(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass
class Breaker:
    failures: int = 5                 # consecutive failures that open it
    open_seconds: float = 60.0        # the longest it stays open before a probe
    clock: Callable[[], float] = time.monotonic
    first_probe_seconds: float = 5.0  # the first probe after it opens
    state: State = State.CLOSED
    _consecutive: int = 0
    _opened_at: float = field(default=0.0)
    _period: float = field(default=0.0)

    @classmethod
    def from_config(cls, cfg: Any) -> Breaker:
        """From a region config's ``breaker:`` section (``config.BreakerConfig``)."""
        return cls(cfg.failures, cfg.open_seconds, first_probe_seconds=cfg.first_probe_seconds)

    def allow(self) -> bool:
        """Whether a batch may be attempted now (an open breaker turns half-open once its
        period is over, and lets exactly that one probe through)."""
        if self.state is State.OPEN and self.clock() - self._opened_at >= self._period:
            self.state = State.HALF_OPEN
            return True
        return self.state is not State.OPEN

    def succeeded(self) -> State:
        self._consecutive = 0
        self.state = State.CLOSED
        return self.state

    def failed(self) -> State:
        self._consecutive += 1
        if self.state is State.HALF_OPEN:          # the probe failed: wait twice as long
            self._open(min(self._period * 2, self.open_seconds))
        elif self.state is State.CLOSED and self._consecutive >= self.failures:
            self._open(min(self.first_probe_seconds, self.open_seconds))
        return self.state

    @property
    def retry_in(self) -> float:
        """Seconds until the next probe (0 unless open)."""
        if self.state is not State.OPEN:
            return 0.0
        return max(0.0, self._period - (self.clock() - self._opened_at))

    def _open(self, period: float) -> None:
        self.state = State.OPEN
        self._opened_at = self.clock()
        self._period = period
