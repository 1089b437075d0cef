"""``mixed_mesh``: three regions writing at once, three daemons; and its anchor, the same
workload on native bidirectional logical replication (``native_mesh``, PostgreSQL 16 and
later) or, on PostgreSQL 15, on pglogical (``pglogical_mesh``), with the split of each run
into the writers' time and the convergence after the last write."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg

from sync.db.migrate import migrate
from sync.testing.cluster import LocalCluster, free_port

from . import native_mesh, pglogical_mesh
from . import workload as w
from .variants import POLICY, fresh_db


def mesh_workload(conns: dict[str, psycopg.Connection], n: int) -> int:
    """Each region seeds its own share at once, then edits and deletes the next region's
    rows; returns the changes authored. Shared by regionsync's mesh, the anchors and the
    scaling runs (any number of regions); the time the writes took is left in
    ``MESH_WRITES``."""
    started = time.perf_counter()
    regions = list(conns)
    k = len(regions)
    per = n // k
    threads = [threading.Thread(target=w.seed, args=(conns[r], per, 1 + i * per))
               for i, r in enumerate(regions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = per * k
    for r in regions:   # every region holds what it is about to edit
        w.wait_count(conns[r], total)
    for i, r in enumerate(regions):   # each region edits and deletes others' rows
        other = regions[(i + 1) % k]
        conns[r].execute("UPDATE contact SET telephone1 = %s WHERE sync_origin = %s AND "
                         "contactid IN (SELECT contactid FROM contact WHERE sync_origin = %s"
                         " ORDER BY contactid LIMIT %s)", (f"by-{r}", other, other, per // 10))
        conns[r].execute("DELETE FROM contact WHERE contactid IN (SELECT contactid FROM "
                         "contact WHERE sync_origin = %s ORDER BY contactid DESC LIMIT %s)",
                         (other, per // 100))
    MESH_WRITES.append(time.perf_counter() - started)
    return total + k * (per // 10) + k * (per // 100)


MESH_WRITES: list[float] = []


def wait_converged(conns: dict[str, psycopg.Connection], timeout: float = 600) -> None:
    def digest(c: psycopg.Connection) -> tuple:
        return c.execute("SELECT count(*), md5(string_agg(contactid::text || "
                         "coalesce(telephone1, '') || modifiedon::text, ',' ORDER BY "
                         "contactid)) FROM contact").fetchone()
    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        if len({digest(c) for c in conns.values()}) == 1:
            return
        time.sleep(0.05)
    raise AssertionError("mesh did not converge")


def check_medical_home(conns: dict[str, psycopg.Connection], n: int) -> None:
    """A row's home region is the one that seeded its number range; medical values may
    exist only there (sync_origin is the *last* writer, which may be another region)."""
    per = n // len(conns)
    for i, (r, c) in enumerate(conns.items()):
        lo, hi = 1 + i * per, (i + 1) * per
        if c.execute("SELECT count(*) FROM contact WHERE medical_notes IS NOT NULL AND NOT "
                     "(substring(lastname from 10)::int BETWEEN %s AND %s)", (lo, hi)
                     ).fetchone()[0]:
            raise AssertionError(f"medical values from another region found in {r}")


def timed_mesh(conns: dict[str, psycopg.Connection], n: int) -> tuple[float, int]:
    """The workload, timed from the first write until every region holds the same rows;
    then no medical value may have left its region. (seconds, changes authored)"""
    t0 = time.perf_counter()
    ops = mesh_workload(conns, n)
    wait_converged(conns)
    elapsed = time.perf_counter() - t0
    check_medical_home(conns, n)
    return elapsed, ops


def mixed_mesh(clusters: dict[str, LocalCluster], n: int, tmp: Path,
               env: dict[str, str] | None = None) -> tuple[float, int]:
    """Three regions, inserts/updates/deletes authored in all three, three daemons."""
    regions = list(clusters)
    urls = {r: fresh_db(c, "mesh") for r, c in clusters.items()}
    for r in regions:
        migrate(urls[r], r, w.CAPTURE)
    procs = []
    for r in regions:
        peers = "".join(f"  - name: {p}\n    url: {urls[p]}\n" for p in regions if p != r)
        cfg = tmp / f"mesh-{r}.yaml"
        cfg.write_text(f"region: {r}\ndatabase:\n  url: {urls[r]}\npeers:\n{peers}"
                       f"policy_dir: {POLICY}\npoll_interval: 0.02\nforward: false\n"
                       f"metrics:\n  port: {free_port()}\n")
        procs.append(subprocess.Popen([sys.executable, "-m", "sync.cli", "run", "--config",
                                       str(cfg)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL,
                                      env={**os.environ, **(env or {})}))
    conns = {r: psycopg.connect(urls[r], autocommit=True) for r in regions}
    try:
        time.sleep(2)
        return timed_mesh(conns, n)
    finally:
        for p in procs:
            p.terminate()
            p.wait(60)
        for c in conns.values():
            c.close()


def report_mesh(clusters: dict[str, LocalCluster], n: int, tmp: Path,
                settings: dict[str, str], reps: int = 3) -> bool:
    """mixed_mesh and the same workload on the anchor (native on 16+, pglogical on 15),
    ``reps`` times each, interleaved;
    True if regionsync's median is not slower. Also the breakdown of the difference: how
    long the writers took (regionsync's pay capture, pglogical's do not), how long each
    took to converge after the last write, and (once) regionsync with its daemons' sessions
    at synchronous_commit=off, as pglogical's apply runs (not a supported setting: see the
    README). One run of each moved by ±15 % on this machine, hence medians."""
    with psycopg.connect(next(iter(clusters.values())).url()) as c:
        major = int(c.execute("SHOW server_version_num").fetchone()[0]) // 10000
    # the anchor users would compare with on this server: native (origin = none) from 16
    other, module = (("native", native_mesh) if major >= 16 else ("pglogical", pglogical_mesh))
    runs: dict[str, list[tuple[float, float]]] = {"regionsync": [], other: []}
    ops = pops = 0
    for rep in range(reps):
        for name in (("regionsync", other) if rep % 2 == 0 else (other, "regionsync")):
            MESH_WRITES.clear()
            if name == "regionsync":
                seconds, ops = mixed_mesh(clusters, n, tmp)
            else:
                anchor = module.run(n, settings, timed_mesh)
                if anchor is None:
                    print(f"  {other} mesh: n/a (apt-get install postgresql-15-pglogical)")
                    return False
                seconds, pops = anchor
            runs[name].append((seconds, MESH_WRITES[-1]))
    MESH_WRITES.clear()
    aseconds, _ = mixed_mesh(clusters, n, tmp, env={"PGOPTIONS": "-c synchronous_commit=off"})
    awrites = MESH_WRITES[-1]

    def rates(name: str, authored: int) -> tuple[float, str]:
        per_s = sorted(authored / sec for sec, _ in runs[name])
        seconds = statistics.median(sec for sec, _ in runs[name])
        writes = statistics.median(wr for _, wr in runs[name])
        return statistics.median(per_s), (
            f"{statistics.median(per_s):,.0f} changes/s [{per_s[0]:,.0f}–{per_s[-1]:,.0f}] "
            f"(writers {writes:.2f}s, then {seconds - writes:.2f}s to converge)")

    ours, text = rates("regionsync", ops)
    print(f"mixed_mesh: {ops:,} inserts/updates/deletes authored in 3 regions, median of "
          f"{reps}: {text}", flush=True)
    print(f"  regionsync, daemons at synchronous_commit=off (once): {ops / aseconds:,.0f} "
          f"changes/s (writers {awrites:.2f}s, then {aseconds - awrites:.2f}s)", flush=True)
    theirs, text = rates(other, pops)
    ratio = ours / theirs
    print(f"  {other} mesh (PostgreSQL {major}), same workload: {text}; regionsync / {other} "
          f"{ratio:.2f}× (target ≥ 1.0× {'PASS' if ratio >= 1.0 else 'FAIL'})")
    return ratio >= 1.0
