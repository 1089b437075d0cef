"""Prometheus metrics (prefix ``regionsync_``). Labels carry region, table, op and reason
names only — never keys or row values.

Each daemon owns a ``CollectorRegistry`` so that several daemons can live in one process
(the test suite) without sharing counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PAIR = ["source", "target"]


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.lag = Gauge("regionsync_lag_seconds",
                         "Age of the oldest change at the source not yet applied at the target, "
                         "on the source's clock (0 when caught up)", PAIR, registry=r)
        self.applied = Counter("regionsync_changes_applied_total",
                               "Rows written into the target region", [*PAIR, "table", "op"],
                               registry=r)
        self.filtered = Counter("regionsync_changes_filtered_total",
                                "Changed rows the policy kept at the source", [*PAIR, "table",
                                                                               "reason"],
                                registry=r)
        self.conflicts = Counter("regionsync_conflicts_total",
                                 "Incoming versions that lost last-writer-wins", [*PAIR, "table"],
                                 registry=r)
        self.dead_letters = Gauge("regionsync_dead_letters",
                                  "Rows from this source waiting in sync.dead_letter", PAIR,
                                  registry=r)
        self.poll_duration = Histogram("regionsync_poll_duration_seconds",
                                       "Time to read and apply one batch", PAIR, registry=r,
                                       buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10,
                                                30, 60, 120))
        self.apply_errors = Counter("regionsync_apply_errors_total",
                                    "Batches that failed and will be retried", PAIR, registry=r)
        self.last_success = Gauge("regionsync_last_success_timestamp_seconds",
                                  "Unix time of the last successful batch", PAIR, registry=r)
        self.policy_info = Gauge("regionsync_policy_info", "The policy in force (value 1)",
                                 ["sha"], registry=r)
        self.policy_reload_failures = Counter("regionsync_policy_reload_failures_total",
                                              "Policy changes refused as invalid", registry=r)
        self.skipped_polls = Counter("regionsync_skipped_polls_total",
                                     "Polls not started because the previous one still ran",
                                     ["source"], registry=r)

    def set_policy(self, sha: str) -> None:
        self.policy_info.clear()
        self.policy_info.labels(sha=sha).set(1)
