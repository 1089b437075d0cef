"""Prometheus metrics (prefix ``regionsync_``). Labels carry region, table, op and reason
names only — never keys or row values.

Each daemon owns a ``CollectorRegistry`` so that several daemons can live in one process
(the test suite) without sharing counters.

Lag is measured without comparing clocks across machines: at each contact with a peer the
age of its oldest unapplied change is computed *on the peer's clock* (its
``clock_timestamp()`` minus the change's ``changed_at``), and between contacts it grows
by local monotonic time. So a skewed peer clock does not distort it, and a peer that
becomes unreachable shows a rising lag rather than the last value or 0.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PAIR = ["source", "target"]
ROW_BUCKETS = (1, 10, 100, 500, 1000, 2500, 5000, 10000, 50000)
TIME_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120)


@dataclass
class PeerHealth:
    """What the daemon knows about one source, for lag, /status and readiness."""

    poll_interval: float
    started: float = field(default_factory=time.monotonic)
    contact: float | None = None          # monotonic time of the last successful read
    lag_at_contact: float = 0.0           # oldest unapplied change's age then (peer clock)
    caught_up: bool = False
    backlog: int = 0
    reachable: bool | None = None
    last_success: float | None = None     # wall time of the last complete batch
    last_error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def read(self, lag: float, pending: int) -> None:
        with self._lock:
            self.contact, self.lag_at_contact = time.monotonic(), lag
            self.backlog, self.caught_up, self.reachable = pending, pending == 0, True
            self.last_error = None

    def applied(self) -> None:
        """The batch read at the last contact is applied: caught up to that snapshot."""
        with self._lock:
            self.contact, self.lag_at_contact = time.monotonic(), 0.0
            self.caught_up, self.backlog, self.last_success = True, 0, time.time()

    def failed(self, error: str, unreachable: bool) -> None:
        with self._lock:
            self.last_error = error
            if unreachable:
                self.reachable = False

    def lag(self) -> float:
        with self._lock:
            now = time.monotonic()
            if self.contact is None:                 # never reached: as old as our start
                return now - self.started
            elapsed = now - self.contact
            if self.caught_up:                       # 0 until a poll is overdue
                grace = 2 * self.poll_interval + 2.0
                return 0.0 if elapsed <= grace else elapsed
            return self.lag_at_contact + elapsed


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.health: dict[tuple[str, str], PeerHealth] = {}
        self.lag = Gauge("regionsync_lag_seconds",
                         "Age of the oldest change at the source not yet applied at the target, "
                         "on the source's clock (0 when caught up; rises while unreachable)",
                         PAIR, registry=r)
        self.backlog = Gauge("regionsync_backlog_changes",
                             "Changes in the source's journal not yet applied (a row "
                             "changed twice counts twice)", PAIR,
                             registry=r)
        self.applied = Counter("regionsync_changes_applied_total",
                               "Rows written into the target region", [*PAIR, "table", "op"],
                               registry=r)
        self.filtered = Counter("regionsync_changes_filtered_total",
                                "Changed rows the policy kept at the source",
                                [*PAIR, "table", "reason"], registry=r)
        self.conflicts = Counter("regionsync_conflicts_total",
                                 "Versions that lost last-writer-wins", [*PAIR, "table"],
                                 registry=r)
        self.dead_letters = Gauge("regionsync_dead_letters",
                                  "Rows from this source waiting in sync.dead_letter", PAIR,
                                  registry=r)
        self.dead_letters_stuck = Gauge(
            "regionsync_dead_letters_stuck",
            "Dead letters that failed for the same reason too often to heal by retrying",
            PAIR, registry=r)
        self.poll_duration = Histogram("regionsync_poll_duration_seconds",
                                       "Time to read and apply one batch", PAIR, registry=r,
                                       buckets=TIME_BUCKETS)
        self.apply_duration = Histogram("regionsync_apply_duration_seconds",
                                        "Time to apply one page in the local transaction", PAIR,
                                        registry=r, buckets=TIME_BUCKETS)
        self.pages = Counter("regionsync_pages_total", "Pages applied", PAIR, registry=r)
        self.page_size = Histogram("regionsync_page_size", "Rows per applied page", PAIR,
                                   registry=r, buckets=ROW_BUCKETS)
        self.apply_errors = Counter("regionsync_apply_errors_total",
                                    "Batches that failed and will be retried", PAIR, registry=r)
        self.last_success = Gauge("regionsync_last_success_timestamp_seconds",
                                  "Unix time of the last complete batch", PAIR, registry=r)
        self.peer_reachable = Gauge("regionsync_peer_reachable",
                                    "1 if the last attempt to reach the peer succeeded", ["peer"],
                                    registry=r)
        self.link_stopped = Gauge("regionsync_link_stopped",
                                  "1 while a peer link is stopped by an error retrying cannot "
                                  "cure (reason on /status and in the log)", PAIR, registry=r)
        self.breaker_state = Gauge("regionsync_breaker_state",
                                   "The link's circuit breaker: 0 closed, 1 half-open, 2 open",
                                   PAIR, registry=r)
        self.apply_retries = Counter("regionsync_apply_retries_total",
                                     "Page transactions rolled back by a deadlock or lock "
                                     "timeout and applied again", PAIR, registry=r)
        self.token_expired = Counter("regionsync_token_expired_total",
                                     "Times the peer's journal no longer held our token "
                                     "(pruned past it): the link reloaded from the peer",
                                     PAIR, registry=r)
        self.throttled = Counter("regionsync_throttled_total",
                                 "Polls the source answered with a retry-after (its "
                                 "serve.max_rows_per_minute cap for us)", PAIR, registry=r)
        self.pruned = Counter("regionsync_pruned_rows_total",
                              "Rows deleted by retention, per sync table", ["table"],
                              registry=r)
        self.leader = Gauge("regionsync_leader",
                            "1 on the active daemon of a region, 0 on a standby", ["region"],
                            registry=r)
        self.policy_info = Gauge("regionsync_policy_info", "The policy in force (value 1)",
                                 ["sha"], registry=r)
        self.policy_reload_failures = Counter("regionsync_policy_reload_failures_total",
                                              "Policy changes refused as invalid", registry=r)
        self.config_reloads = Counter("regionsync_config_reloads_total",
                                      "Configuration reloads (SIGHUP), by result: ok or "
                                      "refused (the running configuration stayed)",
                                      ["result"], registry=r)
        self.config_reload_ok = Gauge("regionsync_config_last_reload_successful",
                                      "1 unless the last reload was refused", registry=r)
        self.config_reload_ok.set(1)
        self.skipped_polls = Counter("regionsync_skipped_polls_total",
                                     "Polls not started because the previous one still ran",
                                     ["source"], registry=r)

    def peer(self, source: str, target: str, poll_interval: float = 1.0) -> PeerHealth:
        """The health record of a source, registered with the lag and backlog gauges."""
        key = (source, target)
        if key not in self.health:
            h = self.health[key] = PeerHealth(poll_interval)
            self.lag.labels(source, target).set_function(h.lag)
            self.backlog.labels(source, target).set_function(lambda: float(h.backlog))
        return self.health[key]

    def forget_peer(self, source: str, target: str) -> None:
        """A link a reload removed: its gauges go, so that no alert waits on a peer that is
        no longer configured (a lag left to rise forever would page someone)."""
        self.health.pop((source, target), None)
        for metric in vars(self).values():
            names = getattr(metric, "_labelnames", ())
            if names[:2] == tuple(PAIR) or names == ("peer",) or names == ("source",):
                # every child of this peer (counters by table and op too); prometheus_client
                # removes one label set at a time and lists them only in ``_metrics``
                for labels in [k for k in getattr(metric, "_metrics", {}) if k[0] == source
                               and (len(names) == 1 or k[1] == target)]:
                    with contextlib.suppress(KeyError):
                        metric.remove(*labels)

    def set_policy(self, sha: str) -> None:
        self.policy_info.clear()
        self.policy_info.labels(sha=sha).set(1)
