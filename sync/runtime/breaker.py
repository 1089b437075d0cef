"""A circuit breaker per peer link.

Back-off alone keeps retrying a peer that is down at a growing interval; the breaker
makes the state explicit and cheap: after ``failures`` consecutive failed batches it
*opens* (no attempt at all, ``/status`` and ``regionsync_breaker_state`` say so), after
``open_seconds`` it lets one probe through (*half-open*), and that probe's outcome closes
it or opens it again for another period. Only transient failures count; a link stopped by
a fatal error has its own state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum


class State(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass
class Breaker:
    failures: int = 5                 # consecutive failures that open it
    open_seconds: float = 60.0        # how long it stays open before a probe
    clock: Callable[[], float] = time.monotonic
    state: State = State.CLOSED
    _consecutive: int = 0
    _opened_at: float = field(default=0.0)

    def allow(self) -> bool:
        """Whether a batch may be attempted now (an open breaker turns half-open once its
        period is over, and lets exactly that one probe through)."""
        if self.state is State.OPEN and self.clock() - self._opened_at >= self.open_seconds:
            self.state = State.HALF_OPEN
            return True
        return self.state is not State.OPEN

    def succeeded(self) -> State:
        self._consecutive = 0
        self.state = State.CLOSED
        return self.state

    def failed(self) -> State:
        self._consecutive += 1
        if self.state is State.HALF_OPEN or self._consecutive >= self.failures:
            self.state = State.OPEN
            self._opened_at = self.clock()
        return self.state
