"""What the per-column merge costs in the apply upsert: ``python -m bench.merge_cost
[--reps R] [--page N]``.

``batch_1000`` lost 13 % against native replication with per-column versions, and the
apply upsert is most of a page's time at the target. This times that upsert alone, so a
change to its SQL can be judged in seconds instead of a whole bench run: one database
(the C capture triggers if installed, as on a real target), 20,000 contacts, a staged
page of ``--page`` rows in which every row's ``firstname`` is newer (as ``batch_1000``
sends), applied with regionsync's settings and committed, interleaved:

- ``merge``: the applier's statements (``sync.apply.merge.passes``): a first pass
  assigning the rows the incoming side dominates in every column (all of this page), and
  the merge for the rest only when some remain (none here);
- ``no_journal``: the same statements as a region that forwards nothing runs them
  (``journal=False``): no mask of the columns that won is computed;
- ``merge_1_lost``: the same on a page in which one row's edit is older than the
  target's: the first pass writes the others, the second merges that row alone;
- ``one_pass``: the per-column merge alone (``UPSERT`` with ``merge_columns``, the
  applier's statement until 2026-12-06), choosing each column from the newer of two
  versions on every row;
- ``assign``: the same statement assigning every sent column and version, deciding on
  the row's time as before per-column versions — what choosing costs at all, on the
  same rows (not what narrower rows would cost: the version columns are written either
  way);
- ``narrow``: the same edit as a narrow page (protocol 4: the key, ``firstname``, the
  row's times and origin, ``firstname``'s version and the base), applied as the applier
  applies one (``NARROW_UPSERT``, an ``UPDATE`` joined by key).

Each repetition checks the page's rows at the target. Prints medians in milliseconds.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import psycopg
from psycopg import sql

from sync.apply.merge import (
    NARROW_UPSERT,
    UPSERT,
    existence,
    merge_columns,
    passes,
    row_columns,
    upsert,
)
from sync.db.catalog import TableInfo, introspect
from sync.db.migrate import migrate
from sync.testing.cluster import LocalCluster
from sync.wire import ident_list

from . import cleanup_on_sigterm
from . import workload as w

ROWS = 20_000
PEER, PEER_NUMBER = "eu-west", 5


Pass = tuple[sql.Composable, sql.Composable]


def statements(info: TableInfo, cols: tuple[str, ...]) -> dict[str, list[Pass]]:
    stamped = ("versionnumber",)
    return {"merge": passes(info, cols, stamped, backfill=False),
            "no_journal": passes(info, cols, stamped, backfill=False, journal=False),
            "merge_1_lost": passes(info, cols, stamped, backfill=False),
            "one_pass": [merge_columns(info, cols, stamped, backfill=False)],
            "assign": [row_columns(info, cols, stamped, backfill=False)],
            "narrow": passes(info, NARROW, stamped, backfill=False, journal=False,
                             narrow=True)}


NARROW = ("contactid", "firstname", "createdon", "modifiedon", "sync_origin", "firstname__v",
          "sync_base")


def stage_page(conn: psycopg.Connection, cols: tuple[str, ...], keys: list, marker: str,
               stage: str = "bench_stage") -> None:
    """The page a peer sends after editing ``firstname`` of ``keys``: its other columns
    and versions as the target holds them, ``firstname`` and its version newer."""
    newer = {"firstname": sql.SQL("%(marker)s"),
             "firstname__v": sql.SQL("sync.version_of(clock_timestamp(), {})").format(
                 sql.Literal(PEER_NUMBER)),
             "modifiedon": sql.SQL("clock_timestamp()"),
             "sync_origin": sql.Literal(PEER)}
    conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(stage)))
    conn.execute(sql.SQL("INSERT INTO {} SELECT {} FROM contact "
                         "WHERE contactid = ANY(%(keys)s)").format(
        sql.Identifier(stage), sql.SQL(", ").join(newer.get(c, sql.Identifier(c)) for c in cols)),
        {"marker": marker, "keys": keys})


def run(reps: int, page: int) -> dict[str, list[float]]:
    with LocalCluster("merge-cost", settings={"shared_buffers": "1GB",
                                              "max_wal_size": "4GB"}) as cluster:
        url = cluster.create_database("merge_cost")
        migrate(url, "eu-north", "auto")
        conn = psycopg.connect(url, autocommit=True)
        w.seed(conn, ROWS)
        conn.execute("INSERT INTO sync.origin (region, number) VALUES (%s, %s) "
                     "ON CONFLICT DO NOTHING", (PEER, PEER_NUMBER))
        info = introspect(conn).tables["contact"]
        data = [c for c in w.SYNCED]
        cols = (*data, *(c + "__v" for c in info.versioned if c in data), "sync_base")
        conn.execute(sql.SQL("CREATE TEMP TABLE bench_stage AS SELECT {} FROM contact "
                             "WITH NO DATA").format(ident_list(cols)))
        conn.execute(sql.SQL("CREATE TEMP TABLE bench_narrow AS SELECT {} FROM contact "
                             "WITH NO DATA").format(ident_list(NARROW)))
        conn.execute("VACUUM ANALYZE contact")
        keys = [k for (k,) in conn.execute("SELECT contactid FROM contact")]
        variants = statements(info, cols)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for rep in range(reps):
            order = list(variants) if rep % 2 == 0 else list(variants)[::-1]
            for name in order:
                marker, batch = f"merge-cost-{rep}-{name}", random.sample(keys, page)
                with conn.transaction():
                    conn.execute("SELECT set_config('regionsync.origin', %s, true), "
                                 "set_config('regionsync.journal', 'off', true), "
                                 "set_config('regionsync.stamped', 'on', true)", (PEER,))
                    shape = NARROW if name == "narrow" else cols
                    stage = "bench_narrow" if name == "narrow" else "bench_stage"
                    stage_page(conn, shape, batch, marker, stage)
                    if name == "narrow":   # as the applier runs a narrow page
                        conn.execute("SET LOCAL enable_hashjoin = off; "
                                     "SET LOCAL enable_mergejoin = off")
                    lost = 0
                    if name == "merge_1_lost":   # one row's edit older than the target's
                        lost = conn.execute("UPDATE bench_stage SET firstname__v = 1 WHERE "
                                            "contactid = %s", (batch[0],)).rowcount
                    started = time.perf_counter()
                    inserted, updated = upsert(
                        conn, variants[name], one=sql.SQL("true"),
                        template=NARROW_UPSERT if name == "narrow" else UPSERT,
                        table=sql.Identifier("contact"), cols=ident_list(shape),
                        scols=ident_list(shape, "s"), stage=sql.Identifier(stage),
                        tname=sql.Literal("contact"), pk=sql.Identifier("contactid"),
                        s_version=existence(info, "s"))
                    times[name].append(time.perf_counter() - started)
                    got = conn.execute("SELECT count(*) FROM contact WHERE firstname = %s",
                                       (marker,)).fetchone()
                    if (inserted, updated) != (0, page - lost) or got != (page - lost,):
                        raise AssertionError(f"{name}: {inserted} inserted, {updated} "
                                             f"updated, {got} rows hold the page's value")
        conn.close()
    return times


def main() -> None:
    cleanup_on_sigterm()
    ap = argparse.ArgumentParser(prog="python -m bench.merge_cost")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--page", type=int, default=5000)
    args = ap.parse_args()
    times = run(args.reps, args.page)
    merge = statistics.median(times["merge"])
    print(f"apply upsert of a {args.page:,}-row page ({args.reps} repetitions, interleaved):")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"  {name:8} {med * 1000:7.1f} ms  ({min(values) * 1000:.1f}–"
              f"{max(values) * 1000:.1f})  {med / merge:5.2f}× merge")


if __name__ == "__main__":
    main()
