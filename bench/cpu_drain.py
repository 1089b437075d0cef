"""CPU per drained row, by process: ``python -m bench.cpu_drain [--rows N] [--reps R]
[--kind drain|batch] [--top]``.

Wall-clock ratios on a shared 2-core machine move by ±15 % from run to run; CPU seconds
spent by each side for the same rows move far less. One source and one target cluster;
the link runs in this process (``forward: false``, as the bench's daemon). Each repetition
updates every row at the source (one statement, or transactions of 1,000 rows with
``--kind batch``), then drains it, and prints wall time and the CPU seconds of the source
server, the target server (every backend of each) and this process. ``--top`` adds each
server's statements by total time (pg_stat_statements). Run it from the tree to measure;
to compare two trees, alternate runs, each with its own C extension installed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from sync.db.catalog import introspect
from sync.db.migrate import migrate
from sync.link import LinkSettings, PeerLink
from sync.policy import load_policy
from sync.source.egress import apply_egress, role_for
from sync.testing.cluster import LocalCluster

from . import cleanup_on_sigterm
from . import workload as w
from .variants import POLICY

TICK = os.sysconf("SC_CLK_TCK")
TOP = ("SELECT calls, round(total_exec_time::numeric, 1), left(regexp_replace(query, "
       "'\\s+', ' ', 'g'), 120) FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 8")


def server_cpu(cluster: LocalCluster) -> float:
    """CPU seconds so far of the postmaster and every process it started."""
    master = int((cluster.data / "postmaster.pid").read_text().split()[0])
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == master or int(stat.parent.name) == master:
                total += (int(fields[11]) + int(fields[12])) / TICK
        except (OSError, ValueError):
            continue
    return total


def own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    cleanup_on_sigterm()
    ap = argparse.ArgumentParser(prog="python -m bench.cpu_drain", description=__doc__)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--kind", choices=["drain", "batch"], default="drain")
    ap.add_argument("--top", action="store_true")
    args = ap.parse_args()
    settings = {"shared_buffers": "1GB", "max_wal_size": "4GB"}
    if args.top:
        settings |= {"shared_preload_libraries": "pg_stat_statements",
                     "pg_stat_statements.track": "all"}
    src_c = LocalCluster("src", settings=settings).start()
    dst_c = LocalCluster("dst", settings=settings).start()
    try:
        su, du = src_c.create_database("s"), dst_c.create_database("d")
        migrate(su, "eu-west", w.CAPTURE)
        migrate(du, "eu-north", w.CAPTURE)
        src = psycopg.connect(su, autocommit=True)
        w.seed(src, args.rows)
        schema = introspect(src)
        policy = load_policy(POLICY, schema)
        apply_egress(src, policy, schema, ["eu-north"])
        link = PeerLink(LinkSettings(
            region="eu-north", peer="eu-west", local_conninfo=du, page_size=5000,
            peer_conninfo=make_conninfo(su, user=role_for("eu-north")), forward=False),
            policy=lambda: policy)
        while link.run_once().full:
            pass
        ids = w.keys(src)
        if args.top:
            for url in (su, du):
                with psycopg.connect(url, autocommit=True) as c:
                    c.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                    c.execute("SELECT pg_stat_statements_reset()")
        runs = []
        for rep in range(args.reps):
            for url in (su, du):
                with psycopg.connect(url, autocommit=True) as c:
                    c.execute("VACUUM ANALYZE contact")
                    c.execute("CHECKPOINT")
            w.update_batches(src, ids, f"m{rep}",
                             size=1000 if args.kind == "batch" else args.rows)
            before = server_cpu(src_c), server_cpu(dst_c), own_cpu(), time.perf_counter()
            rows = 0
            while True:
                batch = link.run_once()
                rows += batch.rows
                if not batch.full:
                    break
            after = server_cpu(src_c), server_cpu(dst_c), own_cpu(), time.perf_counter()
            run = {k: round(a - b, 3) for k, a, b in zip(("source", "target", "link", "wall"),
                                                          after, before, strict=True)}
            runs.append(run)
            print(json.dumps({"rows": rows, **run}), flush=True)
        link.close()
        print("median:", json.dumps({k: round(statistics.median(r[k] for r in runs), 3)
                                     for k in runs[0]}))
        if args.top:
            for name, url in (("source", su), ("target", du)):
                with psycopg.connect(url, autocommit=True) as c:
                    for calls, total, query in c.execute(TOP):
                        print(f"{name} {calls:>5} {total:>8} ms  {query}")
    finally:
        src_c.remove()
        dst_c.remove()


if __name__ == "__main__":
    main()
