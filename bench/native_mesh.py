"""The anchor for ``mixed_mesh`` on PostgreSQL 16 and later: the same workload on native
bidirectional logical replication.

Three nodes, each subscribed to the other two with ``origin = none`` (PostgreSQL 16: a
node does not send on what it applied from another, so there is no loop) and
``copy_data = false``; each publishes ``contact`` with a column list that leaves out the
medical columns (and their per-column versions) — regionsync's shipped-mesh policy, as
far as a publication can say it. The schema is regionsync's (``migrate``) with its
triggers disabled: native replication captures from WAL, so the writers pay no capture,
and its apply workers commit with ``synchronous_commit = off`` (the subscription default),
which regionsync's apply does not do.

What it does not do: there is no last-writer-wins. A change that reaches a node before
the row it changes (an edit of a row whose insert is still on its way from a third node)
is skipped as ``update_missing``/``delete_missing``, and the nodes then differ for good.
PostgreSQL 18 counts those in ``pg_stat_subscription_stats``; the bench reads them and
reports the run as not converged instead of waiting for ever.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg

from sync.testing.cluster import LocalCluster

from . import workload as w

SETTINGS = {"track_commit_timestamp": "on", "max_worker_processes": "16"}


def available(cluster: LocalCluster) -> bool:
    """``origin = none`` needs PostgreSQL 16."""
    with psycopg.connect(cluster.url()) as c:
        return int(c.execute("SHOW server_version_num").fetchone()[0]) >= 160000


def conflicts(conns: dict[str, psycopg.Connection]) -> dict[str, int]:
    """Changes a node skipped because the row was not there (PostgreSQL 18's counters;
    empty before 18)."""
    out: dict[str, int] = {}
    for r, c in conns.items():
        cols = {name for (name,) in c.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'pg_stat_subscription_stats'")}
        wanted = [x for x in ("confl_update_missing", "confl_delete_missing") if x in cols]
        if wanted:
            n = c.execute(f"SELECT coalesce(sum({' + '.join(wanted)}), 0) "
                          "FROM pg_stat_subscription_stats").fetchone()[0]
            if n:
                out[r] = int(n)
    return out


def run(n: int, settings: dict[str, str],
        timed: Callable[[dict[str, psycopg.Connection], int], tuple[float, int]]
        ) -> tuple[float, int] | None:
    """(seconds from the first write to convergence, changes authored) or None."""
    regions = ["eu-west", "eu-north", "us-east"]
    clusters: dict[str, LocalCluster] = {}
    conns: dict[str, psycopg.Connection] = {}
    try:
        for r in regions:
            clusters[r] = LocalCluster(f"native-{r}", settings={**settings, **SETTINGS})
            clusters[r].start()
            if not available(clusters[r]):
                return None
        urls = {r: c.create_database("mesh") for r, c in clusters.items()}
        for r in regions:
            conns[r], columns = w.anchor_node(urls[r], r)
            c = conns[r]
            c.execute(f"CREATE PUBLICATION mesh FOR TABLE public.contact "
                      f"({', '.join(columns)})")
        for r in regions:
            for p in regions:
                if p != r:
                    name = f"{r}_from_{p}".replace("-", "_")
                    conns[r].execute(
                        f"CREATE SUBSCRIPTION {name} CONNECTION '{urls[p]}' PUBLICATION mesh "
                        "WITH (origin = none, copy_data = false)")
        deadline = time.monotonic() + 120
        while any(c.execute("SELECT count(*) FROM pg_stat_subscription "
                            "WHERE pid IS NOT NULL").fetchone()[0] < 2 for c in conns.values()):
            if time.monotonic() > deadline:
                raise AssertionError("native subscriptions did not start: "
                                     f"{clusters['eu-west'].log_tail(15)}")
            time.sleep(0.2)
        try:
            return timed(conns, n)
        except AssertionError as exc:
            skipped = conflicts(conns)
            raise AssertionError(f"native mesh did not converge ({exc}); changes skipped "
                                 f"for a missing row, per node: {skipped or 'none counted'}"
                                 ) from exc
    finally:
        for c in conns.values():
            c.close()
        for c in clusters.values():
            c.remove()
