"""The suite's PostgreSQL harness: a cluster started again after a stop or a crash runs
with the settings it first started with (the fault tests restart clusters under load,
and a restart that fell back to PostgreSQL's 100 connections could fail them for the
harness's sake, not the daemon's)."""

from __future__ import annotations

import psycopg

from sync.testing.cluster import LocalCluster


def test_a_restarted_cluster_keeps_its_port_and_settings() -> None:
    cluster = LocalCluster("harness", fast=True, settings={"work_mem": "7MB"}).start()
    try:
        port = cluster.port
        url = cluster.create_database("h")
        cluster.stop("immediate")
        cluster.restart()
        assert cluster.port == port
        with psycopg.connect(url) as conn:
            shown = [conn.execute(f"SHOW {name}").fetchone()[0]   # type: ignore[index]
                     for name in ("max_connections", "work_mem", "fsync")]
        assert shown == ["200", "7MB", "off"]
    finally:
        cluster.remove()
