"""The things being compared, each over real clusters: COPY floor, native logical
replication (publication with a column list), and the regionsync daemon (a separate
`regionsync run` process with the shipped policy)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from sync.db.catalog import introspect
from sync.db.migrate import migrate
from sync.policy import load_policy
from sync.runtime.leader import LOCK_CLASS, LOCK_ID
from sync.source.egress import apply_egress, role_for
from sync.testing.cluster import LocalCluster, free_port

from . import workload as w

ROOT = Path(__file__).resolve().parents[1]
# The open example regime: every region holds the same columns (all but medical), so that
# the mesh's convergence check can compare every synced column in every region.
POLICY = ROOT / "policies" / "examples" / "shared-mesh"


def fresh_db(cluster: LocalCluster, name: str) -> str:
    cluster.drop_database(name)
    return cluster.create_database(name)


def copy_floor(src: LocalCluster, dst: LocalCluster, src_db: str) -> float:
    """Binary COPY of the 8 synced columns into an empty table: the apply side's limit.
    Piped between two psql processes so no Python sits in the data path."""
    dst_url = dst.url("floor")
    with psycopg.connect(dst_url, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS floor_target")
        c.execute("CREATE TABLE floor_target AS SELECT " + ", ".join(w.COPY_FLOOR_COLUMNS)
                  + " FROM (SELECT NULL::uuid contactid, NULL::text firstname, NULL::text "
                  "lastname, NULL::text emailaddress1, NULL::text telephone1, NULL::text "
                  "address1_country, NULL::date birthdate, NULL::int statecode) x WITH NO DATA")
    cols = ", ".join(w.COPY_FLOOR_COLUMNS)
    start = time.perf_counter()
    out = subprocess.Popen(["psql", "-X", "-q", "-d", src.url(src_db), "-c",
                            f"COPY (SELECT {cols} FROM contact) TO STDOUT (FORMAT binary)"],
                           stdout=subprocess.PIPE)
    inp = subprocess.run(["psql", "-X", "-q", "-d", dst_url, "-c",
                          f"COPY floor_target ({cols}) FROM STDIN (FORMAT binary)"],
                         stdin=out.stdout, capture_output=True, check=True)
    out.wait()
    elapsed = time.perf_counter() - start
    del inp
    return elapsed


class Native:
    """PostgreSQL logical replication of the synced columns (PG15 column list)."""

    name = "native"

    def __init__(self, src: LocalCluster, dst: LocalCluster, n: int) -> None:
        self.src_c, self.dst_c, self.n = src, dst, n
        self.src_url = fresh_db(src, "nat_src")
        self.dst_url = fresh_db(dst, "nat_dst")
        self.src = psycopg.connect(self.src_url, autocommit=True)
        self.dst = psycopg.connect(self.dst_url, autocommit=True)
        for c in (self.src, self.dst):
            c.execute(w.CONTACT_DDL)
        w.seed(self.src, n)
        self.src.execute("CREATE PUBLICATION pub FOR TABLE contact (" + ", ".join(w.SYNCED) + ")")
        self.ids = w.keys(self.src)
        self.sub = 0
        self.subscribe(copy_data=True)
        w.wait_count(self.dst, n)

    def subscribe(self, copy_data: bool) -> None:
        self.sub += 1
        port = self.src_c.port
        self.dst.execute(f"CREATE SUBSCRIPTION sub{self.sub} CONNECTION 'host=127.0.0.1 "
                         f"port={port} dbname=nat_src user=postgres' PUBLICATION pub "
                         f"WITH (copy_data = {str(copy_data).lower()})")

    def unsubscribe(self) -> None:
        self.dst.execute(f"DROP SUBSCRIPTION IF EXISTS sub{self.sub}")

    def pause(self) -> None:
        self.dst.execute(f"ALTER SUBSCRIPTION sub{self.sub} DISABLE")
        end = time.time() + 30
        while time.time() < end and self.src.execute(
                "SELECT count(*) FROM pg_replication_slots WHERE active").fetchone()[0]:
            time.sleep(0.05)

    def resume(self) -> float:
        t = time.perf_counter()
        self.dst.execute(f"ALTER SUBSCRIPTION sub{self.sub} ENABLE")
        return t

    def initial_load(self) -> float:
        self.unsubscribe()
        self.dst.execute("TRUNCATE contact")
        t0 = time.perf_counter()
        self.subscribe(copy_data=True)
        return w.wait_count(self.dst, self.n, ids=self.ids) - t0

    def rss(self) -> int | None:
        return None

    def close(self) -> None:
        self.unsubscribe()
        self.src.close()
        self.dst.close()


class Regionsync:
    """The real daemon in its own process, pulling eu-west into eu-north."""

    name = "regionsync"

    def __init__(self, src: LocalCluster, dst: LocalCluster, n: int, tmp: Path,
                 page_size: int, poll_interval: float = 0.02, egress: bool = True,
                 row_filter: bool = False) -> None:
        self.src_c, self.dst_c, self.n, self.tmp, self.page_size = src, dst, n, tmp, page_size
        self.poll_interval = poll_interval
        self.src_url = fresh_db(src, "rs_src")
        migrate(self.src_url, "eu-west", w.CAPTURE)
        self.src = psycopg.connect(self.src_url, autocommit=True)
        w.seed(self.src, n)
        # as in production: the source enforces its own policy, and the daemon reads it as
        # the role made for eu-north (column grants, journal views)
        self.peer_url = self.src_url
        if egress:
            schema = introspect(self.src)
            policies = POLICY
            if row_filter:   # every row matches: each one sent is recorded in the sent set
                policies = tmp / "owner-policies"
                shutil.copytree(POLICY, policies, dirs_exist_ok=True)
                f = policies / "regionsync.yaml"
                text = f.read_text()
                rule = "address1_country, birthdate, statecode]\n"
                assert rule in text, "the shipped contact rule changed: update the bench"
                f.write_text(text.replace(rule, rule + '    rows: "statecode >= 0"\n', 1))
            apply_egress(self.src, load_policy(policies, schema), schema, ["eu-north"])
            self.peer_url = make_conninfo(self.src_url, user=role_for("eu-north"))
        self.ids = w.keys(self.src)
        self.proc: subprocess.Popen | None = None
        self.lock: psycopg.Connection | None = None
        self.port = free_port()
        self._new_target()
        self.start()
        w.wait_count(self.dst, n)

    def _new_target(self) -> None:
        self.dst_url = fresh_db(self.dst_c, "rs_dst")
        migrate(self.dst_url, "eu-north", w.CAPTURE)
        self.dst = psycopg.connect(self.dst_url, autocommit=True)
        cfg = self.tmp / "eu-north.yaml"
        cfg.write_text(f"region: eu-north\ndatabase:\n  url: {self.dst_url}\npeers:\n"
                       f"  - name: eu-west\n    url: {self.peer_url}\n"
                       f"policy_dir: {POLICY}\npoll_interval: {self.poll_interval}\n"
                       f"page_size: {self.page_size}\nleader_check_interval: 0.02\nforward: false\n"
                       f"metrics:\n  port: {self.port}\n")
        self.config = cfg

    def start(self, standby: bool = False) -> None:
        if standby:  # the bench holds the leader lock: the daemon waits, ready
            self.lock = psycopg.connect(self.dst_url, autocommit=True)
            self.lock.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_CLASS, LOCK_ID))
        self.proc = subprocess.Popen([sys.executable, "-m", "sync.cli", "run", "--config",
                                      str(self.config)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.tmp / "daemon.log", "a"))  # noqa: SIM115
        end = time.time() + 60
        while time.time() < end:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz",
                                            timeout=1) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                time.sleep(0.05)
        raise RuntimeError("daemon did not become ready; see daemon.log")

    def pause(self) -> None:
        self.stop()

    def resume(self) -> float:
        """Start consuming: the standby takes the lock the moment we let go of it."""
        self.start(standby=True)
        t = time.perf_counter()
        assert self.lock is not None
        self.lock.close()
        self.lock = None
        return t

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(120)
        self.proc = None

    def initial_load(self) -> float:
        self.stop()
        self.dst.close()
        self._new_target()
        t0 = self.resume()
        return w.wait_count(self.dst, self.n, ids=self.ids) - t0

    def rss(self) -> int | None:
        """Peak resident set of the daemon process (kB)."""
        if self.proc is None:
            return None
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return None

    def page_seconds(self) -> float | None:
        """Mean apply time per page so far, from the daemon's own histogram."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return None
        total = count = 0.0
        for line in text.splitlines():
            if line.startswith("regionsync_apply_duration_seconds_sum"):
                total += float(line.split()[-1])
            elif line.startswith("regionsync_apply_duration_seconds_count"):
                count += float(line.split()[-1])
        return total / count if count else None

    def close(self) -> None:
        self.stop()
        if self.lock is not None:
            self.lock.close()
        self.src.close()
        self.dst.close()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False
