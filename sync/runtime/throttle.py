"""A token bucket: at most ``rate`` rows a second on average, bursts up to one second's
worth. A peer link applies its pages through one (``max_rows_per_second`` in the peer's
config) so that a large backlog from one peer cannot take the local database from the
application or from other peers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = rate
        self._clock, self._sleep = clock, sleep
        self._tokens = rate
        self._at = clock()
        self._lock = threading.Lock()   # apply lanes take from one bucket

    def take(self, n: int) -> float:
        """Wait until ``n`` rows may go; returns the seconds waited."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.rate, self._tokens + (now - self._at) * self.rate)
            self._at = now
            self._tokens -= n
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait:
            self._sleep(wait)
        return wait
