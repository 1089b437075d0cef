"""python -m bench — regionsync vs native logical replication vs the COPY floor.

Every variant runs in one process, interleaved, several repetitions; the report gives
medians with min–max and ratios (absolute numbers on shared machines are noise; ratios
from one run are the figure). Each repetition is verified: a fast wrong run fails.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import psycopg

from sync.db.migrate import migrate
from sync.testing.cluster import LocalCluster

from . import capture_tax, cleanup_on_sigterm, scaling
from . import workload as w
from .mesh import report_mesh
from .variants import Native, Regionsync, copy_floor, fresh_db

TARGETS = {  # workload -> minimum ratio regionsync / native
    "batch_1000": 1.0, "drain": 1.5, "initial_load": 1.2}


def run_workload(kind: str, v, n: int, rep: int) -> tuple[float, float | None]:
    """(seconds, lag seconds) for one run of ``kind`` on variant ``v``; verified."""
    marker = f"{kind}-{v.name}-{rep}"
    if kind == "initial_load":
        seconds = v.initial_load()
        w.verify(v.src, v.dst, None, n)
        return seconds, None
    if kind == "drain":
        v.pause()
        w.update_batches(v.src, v.ids, marker)
        t0 = v.resume()
        t1 = w.wait_visible(v.dst, v.ids, marker, n)
        w.verify(v.src, v.dst, marker, n)
        return t1 - t0, None
    t0 = time.perf_counter()
    if kind == "one_txn":
        committed = w.update_all_one_txn(v.src, marker)
    else:
        committed = w.update_batches(v.src, v.ids, marker)
    t1 = w.wait_visible(v.dst, v.ids, marker, n)
    w.verify(v.src, v.dst, marker, n)
    return t1 - t0, t1 - committed


def settle(variants: list) -> None:
    """Let the machine go quiet before a timed run: vacuum every table the workloads touch
    (so autovacuum does not wake up inside the next measurement) and checkpoint."""
    for v in variants:
        for conn in (v.src, v.dst):
            conn.execute("VACUUM contact")
            conn.execute("CHECKPOINT")


def paced_lag(v, rate: float, seconds: float) -> list[float]:
    """Source sustains ``rate`` rows/s in 1,000-row transactions; a marker row tells when
    each transaction is visible. Returns per-transaction lags."""
    marker_id = v.ids[0]
    ids = v.ids[1:]
    committed: dict[int, float] = {}
    visible: dict[int, float] = {}
    done = threading.Event()

    def watch() -> None:
        with psycopg.connect(v.dst_url, autocommit=True) as c:
            while not done.is_set() or len(visible) < len(committed):
                row = c.execute("SELECT statecode FROM contact WHERE contactid = %s",
                                (marker_id,)).fetchone()
                now = time.perf_counter()
                seen = row[0] if row else -1
                for i in list(committed):
                    if i <= seen and i not in visible:
                        visible[i] = now
                if done.is_set() and now - max(committed.values(), default=now) > 30:
                    return
                time.sleep(0.005)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    batches = int(rate * seconds / 1000)
    started = time.perf_counter()
    for i in range(1, batches + 1):
        chunk = ids[((i - 1) * 1000) % len(ids):][:1000]
        with v.src.transaction():
            v.src.execute("UPDATE contact SET firstname = %s WHERE contactid = ANY(%s)",
                          (f"lag-{i}", chunk))
            v.src.execute("UPDATE contact SET statecode = %s WHERE contactid = %s",
                          (i, marker_id))
        committed[i] = time.perf_counter()
        delay = started + i * 1000 / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    done.set()
    watcher.join(120)
    return [visible[i] - committed[i] for i in committed if i in visible]


def fmt(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{statistics.median(values):>9,.0f} [{min(values):,.0f}–{max(values):,.0f}]"


def main() -> None:
    cleanup_on_sigterm()
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--page-size", type=int, default=5000)
    ap.add_argument("--poll-interval", type=float, default=0.02,
                    help="regionsync's poll_interval in seconds")
    ap.add_argument("--workloads", default="one_txn,batch_1000,drain,initial_load")
    ap.add_argument("--big", action="store_true",
                    help="also grow to 1M rows: RSS and per-page time at 1M vs 100k")
    ap.add_argument("--no-mesh", action="store_true", help="skip the three-region mesh")
    ap.add_argument("--no-egress", action="store_true",
                    help="read the source as its owner instead of through the destination "
                         "role its policy made (to measure what egress enforcement costs)")
    ap.add_argument("--row-filter", action="store_true",
                    help="the source sends contact under a row filter every row matches "
                         "(statecode >= 0): the worst case of the owner's per-destination "
                         "sent set, where every row sent is recorded")
    ap.add_argument("--capture-tax-only", action="store_true",
                    help="only the capture tax section (tracked vs untracked statements)")
    ap.add_argument("--capture", choices=["auto", "c", "plpgsql"], default="auto",
                    help="the capture triggers of every bench database (auto: C if installed)")
    ap.add_argument("--mesh-only", action="store_true",
                    help="only mixed_mesh and its pglogical anchor")
    ap.add_argument("--no-capture-tax", action="store_true", help="skip the capture tax")
    ap.add_argument("--regions", default=None, metavar="N[,N…]",
                    help="only the scaling runs: this many regions (e.g. 3,5,8), mesh and "
                         "hub-and-spoke, --rows contacts across them (bench/scaling.py)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    n, kinds = args.rows, args.workloads.split(",")
    w.CAPTURE = args.capture
    print(f"regionsync benchmark: {n:,} contact rows (~330 B, 2 medical columns excluded), "
          f"{args.reps} repetitions, page_size {args.page_size}, "
          f"poll_interval {args.poll_interval}s, capture {args.capture}")
    # The same server settings for every cluster and variant. A cache sized for the working
    # set (as any production server is; PostgreSQL's 128 MB default is not) so that the
    # 1M-row per-page figure measures regionsync, not buffer eviction; a WAL budget that
    # keeps checkpoints (and full-page writes) from following each other within a run.
    server = {"shared_buffers": "1GB", "max_wal_size": "4GB"}
    # Fair to native replication: without a short retry interval the launcher naps up
    # to 5 s before starting an enabled or new subscription's worker.
    logical = {**server, "wal_level": "logical", "max_wal_senders": "10",
               "max_replication_slots": "10", "wal_retrieve_retry_interval": "20ms",
               "max_logical_replication_workers": "8", "max_sync_workers_per_subscription": "2"}
    if args.regions:
        with tempfile.TemporaryDirectory(prefix="regionsync-bench-") as tmpdir:
            scaling.report([int(x) for x in args.regions.split(",")], n, Path(tmpdir))
        return
    with tempfile.TemporaryDirectory(prefix="regionsync-bench-") as tmpdir:
        tmp = Path(tmpdir)
        cl = {"eu-west": LocalCluster("eu-west", settings=logical).start(),
              "eu-north": LocalCluster("eu-north", settings=logical).start(),
              "us-east": LocalCluster("us-east", settings=logical).start()}
        with psycopg.connect(cl["eu-west"].url()) as c:
            version = c.execute("SHOW server_version").fetchone()[0]
        print(f"machine: {platform.node()} · {platform.processor() or platform.machine()} · "
              f"{os.cpu_count()} cores · PostgreSQL {version} ({cl['eu-west'].bin}), fsync "
              "on, WAL logical, " + ", ".join(f"{k}={v}" for k, v in server.items()))
        try:
            src, dst = cl["eu-west"], cl["eu-north"]
            if not args.no_capture_tax and not args.mesh_only:
                url = fresh_db(src, "tax")
                migrate(url, "eu-west", w.CAPTURE)
                print(f"capture tax: the same statements with capture on, off and at the floor, "
                      f"{max(args.reps, 5)} repetitions, interleaved …", flush=True)
                capture_tax.report(capture_tax.run(url, n, max(args.reps, 5)))
                if args.capture_tax_only:
                    return
            if args.mesh_only:
                report_mesh(cl, n, tmp, logical, max(args.reps, 3))
                return
            fresh_db(dst, "floor")
            print("setting up: seeding sources and the initial syncs …", flush=True)
            native = Native(src, dst, n)
            rs = Regionsync(src, dst, n, tmp, args.page_size, args.poll_interval,
                            egress=not args.no_egress, row_filter=args.row_filter)
            rates: dict[tuple[str, str], list[float]] = defaultdict(list)
            lags: dict[tuple[str, str], list[float]] = defaultdict(list)
            writes: dict[tuple[str, str], list[float]] = defaultdict(list)  # source busy
            floor: list[float] = []
            for rep in range(args.reps):
                floor.append(n / copy_floor(src, dst, "nat_src"))
                for kind in kinds:
                    order = (native, rs) if rep % 2 == 0 else (rs, native)
                    for v in order:
                        settle([native, rs])
                        seconds, lag = run_workload(kind, v, n, rep)
                        rates[(kind, v.name)].append(n / seconds)
                        if lag is not None:
                            lags[(kind, v.name)].append(lag)
                            writes[(kind, v.name)].append(seconds - lag)
                print(f"  repetition {rep + 1}/{args.reps} done", flush=True)
            rss_small = rs.rss() if "drain" not in kinds else None
            if "drain" in kinds:  # a fresh daemon drains one backlog: its peak RSS
                rs.pause()
                w.update_batches(rs.src, rs.ids, "rss-small")
                rs.resume()
                w.wait_visible(rs.dst, rs.ids, "rss-small", n)
                rss_small, page_small = rs.rss(), rs.page_seconds()
                engine_small = w.engine_page_seconds(rs.dst, args.page_size)
            print()
            print(f"{'workload':14} {'native rows/s':>28} {'regionsync rows/s':>28} "
                  f"{'ratio':>6}  target")
            floor_med = statistics.median(floor)
            print(f"{'COPY floor':14} {fmt(floor):>28} {'':>28} {'':>6}  "
                  "(binary COPY of 8 columns into an empty table)")
            verdicts = []
            for kind in kinds:
                nat, reg = rates[(kind, "native")], rates[(kind, "regionsync")]
                ratio = statistics.median(reg) / statistics.median(nat)
                goal = TARGETS.get(kind)
                verdict = "" if goal is None else (
                    f"≥ {goal:.1f}× {'PASS' if ratio >= goal else 'FAIL'}")
                if goal is not None:
                    verdicts.append(ratio >= goal)
                print(f"{kind:14} {fmt(nat):>28} {fmt(reg):>28} {ratio:>5.2f}×  {verdict}"
                      f"   (regionsync = {statistics.median(reg) / floor_med:.2f}× COPY floor)")
            for kind in kinds:
                for name in ("native", "regionsync"):
                    if lags.get((kind, name)):
                        print(f"  {kind:10} {name:10} source writes took "
                              f"{statistics.median(writes[(kind, name)]) * 1000:6.0f} ms (with "
                              "capture triggers for regionsync), lag after the last commit "
                              f"{statistics.median(lags[(kind, name)]) * 1000:6.0f} ms")
            if "batch_1000" in kinds:
                pace = 0.5 * statistics.median(rates[("batch_1000", "native")])
                lat = sorted(paced_lag(rs, pace, seconds=10))
                p99 = lat[int(0.99 * (len(lat) - 1))] if lat else float("inf")
                ok = p99 <= 1.0
                verdicts.append(ok)
                print(f"lag at a sustained {pace:,.0f} rows/s (50% of native batch_1000): "
                      f"p50 {statistics.median(lat) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms "
                      f"({len(lat)} transactions) — target p99 ≤ 1 s {'PASS' if ok else 'FAIL'}")
            if not args.no_mesh:
                verdicts.append(report_mesh(cl, n, tmp, logical, max(args.reps, 3)))
            if args.big and "drain" in kinds:
                extra = 1_000_000 - n
                print(f"growing the source by {extra:,} rows for the 1M checks …", flush=True)
                w.seed(rs.src, extra, start=n + 1)
                rs.ids = w.keys(rs.src)
                w.wait_count(rs.dst, 1_000_000, timeout=1800)
                rs.pause()
                w.update_batches(rs.src, rs.ids, "rss-big")
                t0 = rs.resume()
                t1 = w.wait_visible(rs.dst, rs.ids, "rss-big", 1_000_000, timeout=1800)
                w.verify(rs.src, rs.dst, "rss-big", 1_000_000)
                rss_big, page_big = rs.rss(), rs.page_seconds()
                engine_big = w.engine_page_seconds(rs.dst, args.page_size)
                grow = rss_big / rss_small - 1
                pgrow = page_big / page_small - 1
                egrow = engine_big / engine_small - 1
                relative = (page_big / engine_big) / (page_small / engine_small) - 1
                verdicts += [grow <= 0.2, pgrow <= 0.2]
                print(f"drain of 1,000,000 changes: {1_000_000 / (t1 - t0):,.0f} rows/s")
                print(f"daemon peak RSS: {rss_small / 1024:.0f} MiB at a {n:,} backlog, "
                      f"{rss_big / 1024:.0f} MiB at 1M ({grow:+.0%}; target ≤ +20% "
                      f"{'PASS' if grow <= 0.2 else 'FAIL'})")
                print(f"apply time per page: {page_small * 1000:.1f} ms at {n:,} target rows, "
                      f"{page_big * 1000:.1f} ms at 1M ({pgrow:+.0%}; target ≤ +20% "
                      f"{'PASS' if pgrow <= 0.2 else 'FAIL'})")
                print(f"  PostgreSQL's own UPDATE of {args.page_size:,} random keys on a copy of "
                      f"the target table: {engine_small * 1000:.1f} ms at {n:,} rows, "
                      f"{engine_big * 1000:.1f} ms at 1M ({egrow:+.0%}); regionsync's page "
                      f"relative to it: {page_small / engine_small:.2f}× → "
                      f"{page_big / engine_big:.2f}× ({relative:+.0%})")
            elif "drain" in kinds:
                print(f"daemon peak RSS draining {n:,} changes: {rss_small / 1024:.0f} MiB; "
                      f"apply time per page {page_small * 1000:.1f} ms (--big compares with 1M)")
            native.close()
            rs.close()
            print(f"\n{sum(verdicts)}/{len(verdicts)} targets met")
        finally:
            for c in cl.values():
                c.remove()


if __name__ == "__main__":
    main()
