"""One poll of one link, and what its outcome means for the link.

A full page is followed at once by the next (drain). Transient failures back off
exponentially with full jitter, per peer, and count toward its circuit breaker; an error
retrying cannot cure stops that link alone (tried again every ``STOPPED_RECHECK``
seconds); the owner's retry-after waits without counting as a failure; a bug is one line
at ERROR and a retry. A standby only keeps its connections warm.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

import psycopg

from sync.config import RegionConfig
from sync.errors import (
    ConfigError,
    PeerFatal,
    SchemaError,
    SyncError,
    Throttled,
    TransientError,
    describe,
    from_db,
)
from sync.link import PeerLink
from sync.runtime.breaker import State
from sync.runtime.metrics import Metrics
from sync.runtime.peerrun import PeerRun

log = logging.getLogger(__name__)

MAX_BACKOFF = 60.0
STOPPED_RECHECK = 300.0   # a stopped link is tried again this often (the cause may be fixed)


class Poller:
    """Runs polls for the daemon; ``config`` is read at each poll (a reload may change it)."""

    def __init__(self, metrics: Metrics, config: Callable[[], RegionConfig],
                 stop: threading.Event) -> None:
        self.metrics = metrics
        self.config = config
        self.stop = stop

    def poll(self, peer: str, run: PeerRun, *, leading: Callable[[], bool]) -> None:
        """One poll: batches until the peer has no full page left, then what its outcome
        means for the link (back off, open the breaker, stop, or run on)."""
        link = run.link
        if not leading() and not self.stop.is_set():
            self._warm(peer, link)
        if not leading() or self.stop.is_set() or time.monotonic() < run.not_before:
            return
        breaker = run.breaker
        if not breaker.allow():
            return
        self._breaker_metric(peer, breaker.state)
        try:
            try:
                while not self.stop.is_set() and leading() and not run.retired:
                    batch = link.run_once()
                    self.metrics.peer_reachable.labels(peer).set(1)
                    if batch.retries:
                        self.metrics.apply_retries.labels(peer, self.config().region).inc(
                            batch.retries)
                    if not (batch.full and batch.complete):
                        break
                if not self.stop.is_set():
                    link.retry_dead_letters_due()
            except psycopg.Error as exc:      # the database edge: classify once, here
                raise from_db(exc, peer=peer) from exc
            run.failures = 0
            self._resume(peer, run)
            self._breaker_metric(peer, breaker.succeeded())
        except Throttled as exc:     # the owner's retry-after: wait, without a failure
            run.not_before = time.monotonic() + exc.retry_after
            self.metrics.throttled.labels(peer, self.config().region).inc()
            log.info("peer %s: %s", peer, describe(exc), extra={"peer": peer})
            link.close()
        except TransientError as exc:
            unreachable = exc.sqlstate is None or exc.sqlstate.startswith("08")
            if unreachable:
                self.metrics.peer_reachable.labels(peer).set(0)
            self._back_off(peer, run, exc, unreachable)
            before = breaker.state
            if self._breaker_metric(peer, breaker.failed()) is State.OPEN \
                    and before is not State.OPEN:
                log.warning("peer %s: circuit breaker open after %d failed batches; next probe "
                            "in %.0fs", peer, breaker.failures, breaker.open_seconds,
                            extra={"peer": peer})
        except (PeerFatal, ConfigError, SchemaError) as exc:
            self._stop_link(peer, run, exc)
        except Exception as exc:   # a bug: one line at ERROR, the traceback at DEBUG
            log.error("peer %s: unexpected %s: %s; will retry", peer, type(exc).__name__,
                      describe(exc), extra={"peer": peer})
            log.debug("traceback", exc_info=True)
            self._back_off(peer, run, exc, False)

    def _breaker_metric(self, peer: str, state: State) -> State:
        self.metrics.breaker_state.labels(peer, self.config().region).set(int(state))
        return state

    def _stop_link(self, peer: str, run: PeerRun, exc: SyncError) -> None:
        """Retrying cannot cure this: the link stops (other links go on), says why on
        /status, in regionsync_link_stopped and in one log line, and is tried again every
        STOPPED_RECHECK seconds in case the cause was fixed."""
        reason = describe(exc)
        link = run.link
        if run.stopped != reason:
            log.error("peer %s: link stopped: %s", peer, reason,
                      extra={"peer": peer, "error": type(exc).__name__})
        run.stopped = reason
        self.metrics.link_stopped.labels(peer, self.config().region).set(1)
        if link.health is not None:
            link.health.failed(f"stopped: {reason}", False)
        run.not_before = time.monotonic() + STOPPED_RECHECK
        link.close()

    def _resume(self, peer: str, run: PeerRun) -> None:
        if run.stopped is not None:
            run.stopped = None
            log.info("peer %s: link running again", peer, extra={"peer": peer})
            self.metrics.link_stopped.labels(peer, self.config().region).set(0)

    def _warm(self, peer: str, link: PeerLink) -> None:
        """A standby keeps its connections open and schemas read, so that taking over
        starts applying at once (a hot standby); failures only matter once it leads."""
        try:
            link.warm()
        except (psycopg.Error, SyncError) as exc:
            log.debug("standby: peer %s not reachable yet (%s)", peer, exc)

    def _back_off(self, peer: str, run: PeerRun, exc: Exception, unreachable: bool) -> None:
        link = run.link
        run.failures += 1
        n = run.failures
        # exponential, capped, with full jitter: peers that failed together (a shared
        # network path) do not retry together
        delay = random.uniform(0, min(MAX_BACKOFF, self.config().poll_interval * 2 ** (n - 1)))
        run.not_before = time.monotonic() + delay
        self.metrics.apply_errors.labels(peer, self.config().region).inc()
        reason = describe(exc)
        if link.health is not None:
            link.health.failed(reason, unreachable)
        log.warning("peer %s: batch failed (%s); retry %d in %.1fs", peer, reason, n, delay,
                    extra={"peer": peer, "attempt": n})
        link.close()
