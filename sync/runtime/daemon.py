"""The regionsync daemon for one region: one scheduled job per peer.

APScheduler runs each peer's poll with ``max_instances=1`` and ``coalesce=True``: a poll
never overlaps the previous one, and missed runs collapse into one. A batch that fills a
page is followed at once by another (drain); otherwise the job waits for the interval.
Transient failures back off exponentially with jitter, per peer. Only the daemon that
holds the region's leader lock polls; a second one waits as a standby. ``stop()``
(SIGTERM, SIGINT) lets the page in flight commit, then returns.
"""

from __future__ import annotations

import contextlib
import logging
import random
import signal
import threading
import time
from datetime import UTC, datetime
from typing import Any

import psycopg
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler

from sync.config import RegionConfig
from sync.db import state
from sync.db.catalog import Schema, introspect
from sync.db.connect import connect
from sync.errors import (
    ConfigError,
    PeerFatal,
    PolicyError,
    SchemaError,
    SyncError,
    Throttled,
    TransientError,
    describe,
    from_db,
)
from sync.link import PeerLink
from sync.policy.holder import PolicyHolder
from sync.policy.loader import policy_fingerprint
from sync.policy.model import Policy
from sync.runtime.breaker import Breaker, State
from sync.runtime.http import StatusServer
from sync.runtime.leader import LeaderLock
from sync.runtime.metrics import Metrics
from sync.runtime.peerrun import PeerRun
from sync.runtime.retention import Pruner
from sync.runtime.status import link_status, local_status
from sync.source.egress import apply_egress

log = logging.getLogger(__name__)

MAX_BACKOFF = 60.0
STOPPED_RECHECK = 300.0   # a stopped link is tried again this often (the cause may be fixed)


class Daemon:
    """Lifecycle: ``start()``, ``stop(timeout)``; ``run()`` = start + wait for a signal."""

    def __init__(self, config: RegionConfig, *, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._scheduler: BackgroundScheduler | None = None
        self._http: StatusServer | None = None
        self._peers: dict[str, PeerRun] = {}
        self._local = config.database.conninfo(where="database.url")
        self._lock = LeaderLock(self._local, config.region)
        self.is_leader = False
        self.policy: PolicyHolder | None = None
        self.http_port: int | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def _local_schema(self) -> Schema:
        """Check the local database is this region's and migrated; read its schema."""
        cfg = self.config
        try:
            with connect(self._local, application_name=f"regionsync-{cfg.region}") as conn:
                try:
                    region = state.region_of(conn)
                except psycopg.errors.UndefinedTable as exc:
                    raise SchemaError(f"database {cfg.database.safe_url()} has no regionsync "
                                      "schema; run `regionsync migrate --config "
                                      f"{cfg.source_file or 'region.yaml'}` first") from exc
                if region != cfg.region:
                    raise ConfigError(
                        f"database {cfg.database.safe_url()} belongs to region "
                        f"{region!r}, not {cfg.region!r}; run "
                        "`regionsync migrate` with this config", key="region",
                        file=str(cfg.source_file) if cfg.source_file else None)
                return introspect(conn)
        except psycopg.Error as exc:
            raise from_db(exc, what=f"local database {cfg.database.safe_url()}") from exc

    def _wait_for_local(self) -> Schema | None:
        """The schema once the local database answers; until then, not ready (503), one
        warning per attempt, exponential backoff. Errors that waiting cannot cure raise."""
        attempt = 0
        while True:
            try:
                return self._local_schema()
            except TransientError as exc:
                attempt += 1
                delay = min(MAX_BACKOFF, 2 ** attempt) * random.uniform(0.5, 1.0)
                log.warning("region %s: %s; retrying in %.0fs (not ready)", self.config.region,
                            exc, delay, extra={"region": self.config.region})
                if self._stop.wait(delay):
                    return None

    def start(self) -> None:
        cfg = self.config
        if cfg.metrics.port:
            token = cfg.metrics.token()
            self._http = StatusServer(cfg.metrics.host, cfg.metrics.port, self.metrics.registry,
                                      self._ready, self.status,
                                      token.get_secret_value() if token else None)
            try:
                self.http_port = self._http.start()
            except OSError as exc:
                raise ConfigError(
                    f"cannot listen on {cfg.metrics.host}:{cfg.metrics.port}: {exc.strerror} "
                    "(another daemon on this port? pick another, or 0 to disable)",
                    key="metrics.port",
                    file=str(cfg.source_file) if cfg.source_file else None) from exc
        schema = self._wait_for_local()
        if schema is None:   # stopped while waiting
            return
        regions = [cfg.region, *(p.name for p in cfg.peers)]
        self.policy = PolicyHolder(cfg.policy_dir, schema, regions=regions,
                                   on_loaded=self._policy_loaded,
                                   on_refused=self._policy_refused)
        for peer in cfg.peers:
            link = PeerLink.from_config(cfg, peer.name, policy=self.policy.current,
                                        metrics=self.metrics, stop=self._stop)
            self._peers[peer.name] = PeerRun(link, Breaker.from_config(cfg.breaker))
        self.metrics.leader.labels(cfg.region).set(0)
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(len(cfg.peers) + 2)},
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None},
            timezone=UTC)
        self._scheduler.add_listener(self._on_skipped, EVENT_JOB_MAX_INSTANCES)
        now = datetime.now(UTC)
        self._check_leader()
        self._scheduler.add_job(self._check_leader, "interval",
                                seconds=cfg.leader_check_interval, id="leader")
        for name in self._peers:
            self._scheduler.add_job(self._poll, "interval", seconds=cfg.poll_interval,
                                    args=[name], id=f"poll-{name}", next_run_time=now)
        self._pruner = Pruner(
            self._local, cfg.retention, pullers=cfg.destination_regions(), stop=self._stop,
            tokens=lambda: {n: p.link.peer_has_seen for n, p in self._peers.items()},
            on_pruned=lambda table, n: self.metrics.pruned.labels(table).inc(n))
        self._scheduler.add_job(self._prune, "interval", seconds=cfg.retention.interval,
                                id="prune")
        self._scheduler.start()
        log.info("region %s (%s): syncing from %s every %.1fs (policy %s)%s", cfg.region,
                 "leader" if self.is_leader else "standby: another daemon holds the leader "
                 "lock; taking over when it goes",
                 ", ".join(self._peers) or "no peers", cfg.poll_interval,
                 self.policy.current().sha,
                 f"; metrics on http://{cfg.metrics.host}:{self.http_port}/metrics"
                 if self.http_port else "", extra={"region": cfg.region})

    def stop(self, timeout: float = 60.0) -> None:
        """Finish the page in flight, commit it, and stop."""
        if self._stopped.is_set():
            return
        self._stop.set()
        scheduler = self._scheduler
        if scheduler is not None:
            done = threading.Event()

            def shutdown() -> None:
                scheduler.shutdown(wait=True)
                done.set()
            threading.Thread(target=shutdown, name="regionsync-shutdown", daemon=True).start()
            if not done.wait(timeout):
                log.warning("polls still running after %.0fs; exiting anyway", timeout)
        for run in self._peers.values():
            run.link.close()
        self._lock.release()
        if self._http is not None:
            self._http.stop()
        self._stopped.set()
        log.info("region %s: stopped", self.config.region)

    def run(self) -> None:
        """Start, then block until SIGTERM/SIGINT; returns after a clean stop.

        Handlers go in before ``start()``, so a signal during start-up also ends cleanly."""
        requested = threading.Event()

        def handler(signum: int, _frame: object) -> None:
            log.info("received %s; finishing the page in flight", signal.Signals(signum).name)
            requested.set()
            self._stop.set()
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        self.start()
        requested.wait()
        self.stop()

    def link(self, peer: str) -> PeerLink:
        """The running link for ``peer`` (KeyError before `start` made it)."""
        return self._peers[peer].link

    # -- leadership -----------------------------------------------------------------------
    def _check_leader(self) -> None:
        region = self.config.region
        if self.is_leader and not self._lock.held():
            self.is_leader = False
            log.error("region %s: lost the leader lock (local database session ended); "
                      "standing by", region)
        if not self.is_leader and not self._stop.is_set() and self._lock.try_acquire():
            self.is_leader = True
            log.info("region %s: this daemon is the leader", region)
            for name in self._peers:   # take over at once, not at the next poll tick
                with contextlib.suppress(JobLookupError):
                    assert self._scheduler is not None   # leadership is checked after start
                    self._scheduler.modify_job(f"poll-{name}", next_run_time=datetime.now(UTC))
        elif not self.is_leader:
            log.debug("region %s: standby; another daemon holds the leader lock", region)
        self.metrics.leader.labels(region).set(1 if self.is_leader else 0)

    # -- jobs -----------------------------------------------------------------------------
    def _poll(self, peer: str) -> None:
        run = self._peers[peer]
        link = run.link
        if not self.is_leader and not self._stop.is_set():
            self._warm(peer, link)
        if not self.is_leader or self._stop.is_set() or time.monotonic() < run.not_before:
            return
        breaker = run.breaker
        if not breaker.allow():
            return
        self._breaker_metric(peer, breaker.state)
        try:
            try:
                while not self._stop.is_set() and self.is_leader:
                    batch = link.run_once()
                    self.metrics.peer_reachable.labels(peer).set(1)
                    if batch.retries:
                        self.metrics.apply_retries.labels(peer, self.config.region).inc(
                            batch.retries)
                    if not (batch.full and batch.complete):
                        break
                if not self._stop.is_set():
                    link.retry_dead_letters_due()
            except psycopg.Error as exc:      # the database edge: classify once, here
                raise from_db(exc, peer=peer) from exc
            run.failures = 0
            self._resume(peer)
            self._breaker_metric(peer, breaker.succeeded())
        except Throttled as exc:     # the owner's retry-after: wait, without a failure
            run.not_before = time.monotonic() + exc.retry_after
            self.metrics.throttled.labels(peer, self.config.region).inc()
            log.info("peer %s: %s", peer, describe(exc), extra={"peer": peer})
            link.close()
        except TransientError as exc:
            unreachable = exc.sqlstate is None or exc.sqlstate.startswith("08")
            if unreachable:
                self.metrics.peer_reachable.labels(peer).set(0)
            self._back_off(peer, link, exc, unreachable)
            before = breaker.state
            if self._breaker_metric(peer, breaker.failed()) is State.OPEN \
                    and before is not State.OPEN:
                log.warning("peer %s: circuit breaker open after %d failed batches; next probe "
                            "in %.0fs", peer, breaker.failures, breaker.open_seconds,
                            extra={"peer": peer})
        except (PeerFatal, ConfigError, SchemaError) as exc:
            self._stop_link(peer, link, exc)
        except Exception as exc:   # a bug: one line at ERROR, the traceback at DEBUG
            log.error("peer %s: unexpected %s: %s; will retry", peer, type(exc).__name__,
                      describe(exc), extra={"peer": peer})
            log.debug("traceback", exc_info=True)
            self._back_off(peer, link, exc, False)

    def _prune(self) -> None:
        """Retention (the leader's job): a failure is logged and tried next round."""
        if not self.is_leader or self._stop.is_set():
            return
        try:
            self._pruner.run_once()
        except psycopg.Error as exc:
            log.warning("pruning failed (%s); next round in %.0fs", describe(exc),
                        self.config.retention.interval)

    def _breaker_metric(self, peer: str, state: State) -> State:
        self.metrics.breaker_state.labels(peer, self.config.region).set(int(state))
        return state

    def _stop_link(self, peer: str, link: PeerLink, exc: SyncError) -> None:
        """Retrying cannot cure this: the link stops (other links go on), says why on
        /status, in regionsync_link_stopped and in one log line, and is tried again every
        STOPPED_RECHECK seconds in case the cause was fixed."""
        reason = describe(exc)
        run = self._peers[peer]
        if run.stopped != reason:
            log.error("peer %s: link stopped: %s", peer, reason,
                      extra={"peer": peer, "error": type(exc).__name__})
        run.stopped = reason
        self.metrics.link_stopped.labels(peer, self.config.region).set(1)
        if link.health is not None:
            link.health.failed(f"stopped: {reason}", False)
        run.not_before = time.monotonic() + STOPPED_RECHECK
        link.close()

    def _resume(self, peer: str) -> None:
        run = self._peers[peer]
        if run.stopped is not None:
            run.stopped = None
            log.info("peer %s: link running again", peer, extra={"peer": peer})
            self.metrics.link_stopped.labels(peer, self.config.region).set(0)

    def _warm(self, peer: str, link: PeerLink) -> None:
        """A standby keeps its connections open and schemas read, so that taking over
        starts applying at once (a hot standby); failures only matter once it leads."""
        try:
            link.warm()
        except (psycopg.Error, SyncError) as exc:
            log.debug("standby: peer %s not reachable yet (%s)", peer, exc)

    def _back_off(self, peer: str, link: PeerLink, exc: Exception, unreachable: bool) -> None:
        run = self._peers[peer]
        run.failures += 1
        n = run.failures
        # exponential, capped, with full jitter: peers that failed together (a shared
        # network path) do not retry together
        delay = random.uniform(0, min(MAX_BACKOFF, self.config.poll_interval * 2 ** (n - 1)))
        run.not_before = time.monotonic() + delay
        self.metrics.apply_errors.labels(peer, self.config.region).inc()
        reason = describe(exc)
        if link.health is not None:
            link.health.failed(reason, unreachable)
        log.warning("peer %s: batch failed (%s); retry %d in %.1fs", peer, reason, n, delay,
                    extra={"peer": peer, "attempt": n})
        link.close()

    def _on_skipped(self, event: JobExecutionEvent) -> None:
        if event.job_id.startswith("poll-"):
            self.metrics.skipped_polls.labels(event.job_id.removeprefix("poll-")).inc()

    # -- policy, readiness and status -----------------------------------------------------
    def _policy_loaded(self, policy: Policy) -> None:
        """A policy is in force: record it, and make this database enforce it for every
        destination (egress roles, column grants, row-level security)."""
        self.metrics.set_policy(policy.sha)
        cfg = self.config
        try:
            with connect(self._local, application_name=f"regionsync-{cfg.region}") as c:
                state.record_policy(c, policy.sha, policy_fingerprint(policy))
                if cfg.egress:
                    apply_egress(c, policy, introspect(c), cfg.destination_regions(), cfg.serve)
        except psycopg.Error as exc:
            log.error("policy %s: cannot enforce egress in the local database (%s); run "
                      "`regionsync roles --config %s --apply` as the tables' owner", policy.sha,
                      describe(exc), cfg.source_file or "region.yaml")

    def _policy_refused(self, exc: PolicyError) -> None:
        self.metrics.policy_reload_failures.inc()

    def _ready(self) -> tuple[bool, str]:
        if self.policy is None:
            return False, "starting: waiting for the local database"
        try:
            with connect(self._local,
                         application_name=f"regionsync-{self.config.region}-ready") as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            return False, f"local database unreachable: {type(exc).__name__}"
        role = "leader" if self.is_leader else "standby"
        return True, f"ready; {role}; policy {self.policy.current().sha}"

    def status(self) -> dict[str, Any]:
        """What /status serves: the daemon's view plus the local database's records."""
        cfg = self.config
        try:
            with connect(self._local, application_name=f"regionsync-{cfg.region}-status") as c:
                stored = local_status(c)
        except psycopg.Error as exc:
            stored = {"error": f"local database unreachable: {type(exc).__name__}"}
        peers: dict[str, Any] = {}
        for name in (p.name for p in cfg.peers):
            run = self._peers.get(name)
            if run is None:    # still waiting for the local database
                peers[name] = {"state": "starting"}
                continue
            peers[name] = link_status(
                stored.get("peers", {}).get(name, {}) if isinstance(stored, dict) else {},
                self.metrics.peer(name, cfg.region, cfg.poll_interval), run.link,
                run.breaker.state.name, run.stopped)
        return {"region": cfg.region, "role": "leader" if self.is_leader else "standby",
                "policy": self.policy.current().sha if self.policy else None, "peers": peers}
