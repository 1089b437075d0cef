"""How cost grows with regions (``python -m bench --regions 3,5,8``): the mixed workload
of ``mixed_mesh`` authored in every region at once, on a full mesh (n·(n−1) links) and on
hub-and-spoke (the first region is the hub, pulling what each spoke wrote and forwarding
it; each spoke pulls everything but its own from the hub: 2·(n−1) links).

Per size and topology: changes/s from the first write until every region holds the same
rows, the time to converge after the last write, and idle CPU once quiet — per region,
the daemon's own and its PostgreSQL server's (every backend: the daemon's local sessions
and the peers' polls it answers), read from ``/proc`` over a quiet window at the
production ``poll_interval`` of 1 s (set by a SIGHUP reload of every daemon).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from sync.db.migrate import migrate
from sync.testing.cluster import LocalCluster

from . import workload as w
from .cpu_drain import TICK, server_cpu
from .mesh import MESH_WRITES, check_medical_home, mesh_workload, wait_converged
from .variants import POLICY, fresh_db

NAMES = ("eu-west", "eu-north", "us-east", "ap-south", "sa-east", "af-south", "me-central",
         "ca-central", "eu-south", "ap-east")
IDLE_SECONDS = 20.0


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) of one process so far; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def _peers(topology: str, regions: list[str], r: str) -> list[tuple[str, str]]:
    """(peer, origins) for region ``r``."""
    hub = regions[0]
    if topology == "mesh":
        return [(p, "peer") for p in regions if p != r]
    return [(p, "peer") for p in regions if p != r] if r == hub else [(hub, "any")]


def _config(path: Path, r: str, urls: dict[str, str], peers: list[tuple[str, str]],
            poll: float, forward: bool) -> None:
    lines = [f"region: {r}", "database:", f"  url: {urls[r]}", "peers:"]
    for p, origins in peers:
        lines += [f"  - name: {p}", f"    url: {urls[p]}", f"    origins: {origins}"]
    lines += [f"policy_dir: {POLICY}", f"poll_interval: {poll}",
              f"forward: {'true' if forward else 'false'}", "metrics:", "  port: 0"]
    path.write_text("\n".join(lines) + "\n")


def run_one(clusters: dict[str, LocalCluster], topology: str, n: int,
            tmp: Path) -> dict[str, float]:
    regions = list(clusters)
    urls = {r: fresh_db(c, f"scale{len(regions)}") for r, c in clusters.items()}
    for r in regions:
        migrate(urls[r], r, w.CAPTURE)
    forward = {r: topology == "hub" and r == regions[0] for r in regions}
    paths = {r: tmp / f"scale-{topology}-{r}.yaml" for r in regions}
    for r in regions:
        _config(paths[r], r, urls, _peers(topology, regions, r), 0.1, forward[r])
    procs = {r: subprocess.Popen([sys.executable, "-m", "sync.cli", "run", "--config",
                                  str(paths[r])], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL) for r in regions}
    conns = {r: psycopg.connect(urls[r], autocommit=True) for r in regions}
    try:
        time.sleep(3)
        MESH_WRITES.clear()
        t0 = time.perf_counter()
        ops = mesh_workload(conns, n)
        wait_converged(conns, timeout=1800)
        seconds = time.perf_counter() - t0
        check_medical_home(conns, n)
        writes = MESH_WRITES[-1]
        for r in regions:     # idle at the production poll interval: reload, not restart
            _config(paths[r], r, urls, _peers(topology, regions, r), 1.0, forward[r])
            procs[r].send_signal(1)   # SIGHUP
        time.sleep(5)
        before = {r: (_cpu(procs[r].pid), server_cpu(clusters[r])) for r in regions}
        time.sleep(IDLE_SECONDS)
        after = {r: (_cpu(procs[r].pid), server_cpu(clusters[r])) for r in regions}
        daemon = [100 * (after[r][0] - before[r][0]) / IDLE_SECONDS for r in regions]
        server = [100 * (after[r][1] - before[r][1]) / IDLE_SECONDS for r in regions]
        return {"changes": ops, "per_s": ops / seconds, "converge": seconds - writes,
                "writes": writes, "daemon_cpu": sum(daemon) / len(daemon),
                "daemon_cpu_max": max(daemon), "server_cpu": sum(server) / len(server)}
    finally:
        for p in procs.values():
            p.terminate()
            p.wait(60)
        for c in conns.values():
            c.close()


def report(sizes: list[int], n: int, tmp: Path) -> None:
    clusters = {name: LocalCluster(name).start() for name in NAMES[:max(sizes)]}
    try:
        print(f"scaling: {n:,} contacts seeded across the regions, then 10% edited and 1% "
              f"deleted by the next region; poll_interval 0.1 s under load, 1 s idle; "
              f"{os.cpu_count()} cores for every server and daemon", flush=True)
        print(f"{'regions':>7} {'topology':9} {'links':>5} {'changes/s':>10} "
              f"{'converge s':>10} {'idle CPU % per region: daemon (max)':>36} {'server':>7}")
        for size in sizes:
            subset = {r: clusters[r] for r in NAMES[:size]}
            for topology in ("mesh", "hub"):
                links = size * (size - 1) if topology == "mesh" else 2 * (size - 1)
                res = run_one(subset, topology, n, tmp)
                print(f"{size:>7} {topology:9} {links:>5} {res['per_s']:>10,.0f} "
                      f"{res['converge']:>10.2f} {res['daemon_cpu']:>29.2f} "
                      f"({res['daemon_cpu_max']:.2f}) {res['server_cpu']:>7.2f}", flush=True)
    finally:
        for c in clusters.values():
            c.remove()
