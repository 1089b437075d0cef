"""The regionsync daemon for one region: one scheduled job per peer.

APScheduler runs each peer's poll with ``max_instances=1`` and ``coalesce=True``: a poll
never overlaps the previous one, and missed runs collapse into one. A batch that fills a
page is followed at once by another (drain); otherwise the job waits for the interval.
Transient failures back off exponentially with jitter, per peer. Only the daemon that
holds the region's leader lock polls; a second one waits as a standby. ``stop()``
(SIGTERM, SIGINT) lets the page in flight commit, then returns; ``reload()`` (SIGHUP)
re-reads the config and starts, stops or restarts only the links it changes
(``sync.runtime.reload``).
"""

from __future__ import annotations

import contextlib
import logging
import random
import signal
import threading
from datetime import UTC, datetime
from typing import Any

import psycopg
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler

from sync.config import RegionConfig, load_config
from sync.db import state
from sync.db.catalog import Schema, introspect
from sync.db.connect import connect
from sync.errors import (
    ConfigError,
    PolicyError,
    SchemaError,
    SyncError,
    TransientError,
    describe,
    from_db,
)
from sync.link import PeerLink
from sync.policy.holder import PolicyHolder
from sync.policy.loader import load_policy, policy_fingerprint
from sync.policy.model import Policy
from sync.runtime.breaker import Breaker
from sync.runtime.http import StatusServer
from sync.runtime.leader import LeaderLock
from sync.runtime.metrics import Metrics
from sync.runtime.peerrun import PeerRun
from sync.runtime.poll import Poller
from sync.runtime.reload import ReloadRecord, plan_reload
from sync.runtime.retention import Pruner
from sync.runtime.status import link_status, local_status
from sync.source.egress import apply_egress

log = logging.getLogger(__name__)

MAX_BACKOFF = 60.0
POLL_THREADS = 64         # made on demand: room for the peers a reload adds


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
        self.last_reload: ReloadRecord | None = None
        self._poller = Poller(self.metrics, lambda: self.config, self._stop)
        self._reload_lock = threading.Lock()

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
        self.metrics.leader.labels(cfg.region).set(0)
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max(POLL_THREADS, len(cfg.peers) + 2))},
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None},
            timezone=UTC)
        self._scheduler.add_listener(self._on_skipped, EVENT_JOB_MAX_INSTANCES)
        self._check_leader()
        self._scheduler.add_job(self._check_leader, "interval",
                                seconds=cfg.leader_check_interval, id="leader")
        for peer in cfg.peers:
            self._start_link(cfg, peer.name)
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
        for run in list(self._peers.values()):
            run.link.close()
        self._lock.release()
        if self._http is not None:
            self._http.stop()
        self._stopped.set()
        log.info("region %s: stopped", self.config.region)

    def run(self) -> None:
        """Start, then block until SIGTERM/SIGINT; returns after a clean stop.

        Handlers go in before ``start()``, so a signal during start-up also ends cleanly."""
        wake, reload = threading.Event(), threading.Event()

        def handler(signum: int, _frame: object) -> None:
            log.info("received %s; finishing the page in flight", signal.Signals(signum).name)
            self._stop.set()
            wake.set()

        def hangup(_signum: int, _frame: object) -> None:
            reload.set()
            wake.set()
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGHUP, hangup)
        self.start()
        while not self._stop.is_set():
            # The kernel may hand a signal to any thread; Python runs its handler only in
            # the main thread, once that thread runs again. A wait without a timeout is not
            # woken then (seen: a SIGHUP, and a SIGTERM, left unhandled until the next
            # signal), so the main thread looks in twice a second.
            wake.wait(0.5)
            wake.clear()
            if reload.is_set() and not self._stop.is_set():
                reload.clear()
                self.reload()
        self.stop()

    # -- the set of links: start, reload --------------------------------------------------
    def _start_link(self, cfg: RegionConfig, name: str) -> None:
        assert self._scheduler is not None and self.policy is not None
        link = PeerLink.from_config(cfg, name, policy=self.policy.current,
                                    metrics=self.metrics, stop=self._stop)
        self._peers[name] = PeerRun(link, Breaker.from_config(cfg.breaker))
        self._scheduler.add_job(self._poll, "interval", seconds=cfg.poll_interval,
                                args=[name], id=f"poll-{name}", next_run_time=datetime.now(UTC))

    def _end_link(self, name: str, timeout: float = 60.0) -> None:
        """Stop one link for good: no new page, the one in flight commits, then close."""
        run = self._peers[name]
        run.retired = True
        assert self._scheduler is not None
        with contextlib.suppress(JobLookupError):
            self._scheduler.remove_job(f"poll-{name}")
        if run.busy.acquire(timeout=timeout):
            run.busy.release()
        else:
            log.warning("peer %s: its poll still runs after %.0fs; closing anyway", name,
                        timeout, extra={"peer": name})
        run.link.close()
        del self._peers[name]
        self.metrics.forget_peer(name, self.config.region)

    def reload(self) -> ReloadRecord:
        """Re-read the config file (SIGHUP). A file that does not load, or whose policy
        does not validate for its regions, is refused in one line: nothing changes."""
        with self._reload_lock:
            record = self._reload()
            self.last_reload = record
            self.metrics.config_reloads.labels("ok" if record.ok else "refused").inc()
            self.metrics.config_reload_ok.set(1 if record.ok else 0)
            return record

    def _reload(self) -> ReloadRecord:
        running = self.config
        source = running.source_file
        if source is None or self._scheduler is None or self.policy is None:
            return ReloadRecord(ok=False, error="not started from a config file")
        try:
            plan = plan_reload(running, load_config(source))
            cfg = plan.effective
            regions = [cfg.region, *(p.name for p in cfg.peers)]
            load_policy(cfg.policy_dir, self.policy.schema, regions)
        except SyncError as exc:
            log.error("reload refused, the running configuration stays: %s", describe(exc),
                      extra={"region": running.region})
            return ReloadRecord(ok=False, error=describe(exc))
        for key in plan.at_restart:
            log.warning("reload: %s changed in %s; it takes effect at the next restart",
                        key, source, extra={"region": running.region})
        for name in (*plan.removed, *plan.changed):
            self._end_link(name)
        self.config = cfg
        self.policy.regions = regions
        self._pruner.cfg, self._pruner.pullers = cfg.retention, cfg.destination_regions()
        for name in (*plan.changed, *plan.added):
            self._start_link(cfg, name)
        if plan.added or plan.removed or running.destinations != cfg.destinations \
                or running.serve != cfg.serve:
            self._policy_loaded(self.policy.current())   # roles for the destinations now
        log.info("reload: %s", plan.summary(), extra={"region": cfg.region})
        return ReloadRecord(plan=plan)

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
            for name in list(self._peers):   # take over at once, not at the next tick
                with contextlib.suppress(JobLookupError):
                    assert self._scheduler is not None   # leadership is checked after start
                    self._scheduler.modify_job(f"poll-{name}", next_run_time=datetime.now(UTC))
        elif not self.is_leader:
            log.debug("region %s: standby; another daemon holds the leader lock", region)
        self.metrics.leader.labels(region).set(1 if self.is_leader else 0)

    # -- jobs -----------------------------------------------------------------------------
    def _poll(self, peer: str) -> None:
        run = self._peers.get(peer)
        if run is None or run.retired:
            return
        with run.busy:      # a reload that stops this link waits for the page in flight
            if not run.retired:
                self._poller.poll(peer, run, leading=lambda: self.is_leader)

    def _prune(self) -> None:
        """Retention (the leader's job): a failure is logged and tried next round."""
        if not self.is_leader or self._stop.is_set():
            return
        try:
            self._pruner.run_once()
        except psycopg.Error as exc:
            log.warning("pruning failed (%s); next round in %.0fs", describe(exc),
                        self.config.retention.interval)

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
                "policy": self.policy.current().sha if self.policy else None, "peers": peers,
                "reload": self.last_reload.as_status() if self.last_reload else None}
