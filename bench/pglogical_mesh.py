"""The anchor for ``mixed_mesh``: the same workload on pglogical's multi-master mesh.

Three nodes, each subscribed to the other two with ``forward_origins = '{}'`` (no
echo), ``last_update_wins`` on commit timestamps, and a replication set whose column
list leaves out the medical columns and their versions — regionsync's shipped-mesh policy, as far as
pglogical can say it. The schema is regionsync's (``migrate``) with its triggers
disabled: pglogical captures from WAL, so the writers pay no capture and the apply
workers run with ``synchronous_commit = off`` (pglogical's default), which regionsync's
apply does not do.

Needs Debian's ``postgresql-15-pglogical``; without it the bench prints n/a.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psycopg

from sync.testing.cluster import LocalCluster

from . import workload as w

SETTINGS = {"shared_preload_libraries": "pglogical", "track_commit_timestamp": "on",
            "pglogical.conflict_resolution": "last_update_wins",
            "max_worker_processes": "16"}


def available(cluster: LocalCluster) -> bool:
    """Debian's layout: /usr/lib/postgresql/15/bin → /usr/share/postgresql/15/extension."""
    major = cluster.bin.parent.name
    return (Path("/usr/share/postgresql") / major / "extension" / "pglogical.control").exists()


def trust_output_plugin(cluster: LocalCluster) -> None:
    """Servers with an allow-list of logical decoding output plugins (a setting some
    builds carry) must name pglogical's."""
    with psycopg.connect(cluster.url(), autocommit=True) as c:
        row = c.execute("SELECT setting FROM pg_settings "
                        "WHERE name = 'output_plugin_libraries'").fetchone()
        if row is not None and "pglogical_output" not in row[0]:
            names = [x.strip() for x in row[0].split(",") if x.strip()] + ["pglogical_output"]
            c.execute("ALTER SYSTEM SET output_plugin_libraries = "
                      + ", ".join(f"'{x}'" for x in names if x.replace("_", "").isalnum()))
            c.execute("SELECT pg_reload_conf()")


def run(n: int, settings: dict[str, str],
        timed: Callable[[dict[str, psycopg.Connection], int], tuple[float, int]]
        ) -> tuple[float, int] | None:
    """(seconds from the first write to convergence, changes authored) or None."""
    regions = ["eu-west", "eu-north", "us-east"]
    clusters: dict[str, LocalCluster] = {}
    conns: dict[str, psycopg.Connection] = {}
    try:
        for r in regions:
            clusters[r] = LocalCluster(f"pgl-{r}", settings={**settings, **SETTINGS})
            if not available(clusters[r]):
                return None
            clusters[r].start()
            trust_output_plugin(clusters[r])
        urls = {r: c.create_database("mesh") for r, c in clusters.items()}
        for r in regions:
            conns[r], columns = w.anchor_node(urls[r], r)
            c = conns[r]
            c.execute("CREATE EXTENSION pglogical")
            c.execute("SELECT pglogical.create_node(node_name := %s, dsn := %s)",
                      (r.replace("-", "_"), urls[r]))
            c.execute("SELECT pglogical.create_replication_set('mesh', true, true, true, false)")
            c.execute("SELECT pglogical.replication_set_add_table('mesh', 'public.contact', "
                      "false, columns := %s)", (columns,))
        for r in regions:
            for p in regions:
                if p != r:
                    conns[r].execute(
                        "SELECT pglogical.create_subscription(subscription_name := %s, "
                        "provider_dsn := %s, replication_sets := ARRAY['mesh'], "
                        "synchronize_structure := false, synchronize_data := false, "
                        "forward_origins := '{}')", (f"{r}_from_{p}".replace("-", "_"), urls[p]))
        deadline = time.monotonic() + 120
        while any(s != "replicating" for c in conns.values() for (s,) in c.execute(
                "SELECT status FROM pglogical.show_subscription_status()")):
            if time.monotonic() > deadline:
                status = [row for c in conns.values() for row in c.execute(
                    "SELECT subscription_name, status FROM pglogical.show_subscription_status()")]
                raise AssertionError(f"pglogical subscriptions did not start replicating: "
                                     f"{status}; {clusters['eu-west'].log_tail(15)}")
            time.sleep(0.2)
        return timed(conns, n)
    finally:
        for c in conns.values():
            c.close()
        for c in clusters.values():
            c.remove()
