"""Operations: skew-free lag, leader/standby, /status, status/dlq/conflicts/resync, logs."""

from __future__ import annotations

import glob
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest

from sync.config import RegionConfig
from sync.db.migrate import migrate
from sync.policy import load_policy
from sync.runtime.daemon import Daemon
from sync.runtime.metrics import Metrics
from sync.testing.cluster import LocalCluster, free_port
from tests.fix_daemons import mesh_config, wait_for
from tests.fix_pg import POLICIES, Mesh, new_link
from tests.integration.helpers import account, cli, contact


def region_config(mesh: Mesh, region: str, port: int = 0, **kw) -> RegionConfig:
    peers = [{"name": p, "url": mesh.urls[p]} for p in ("eu-west", "eu-north", "us-east")
             if p != region]
    return RegionConfig(region=region, database={"url": mesh.urls[region]}, peers=peers,
                        policy_dir=POLICIES, poll_interval=0.2, metrics={"port": port}, **kw)


def config_file(tmp_path: Path, mesh: Mesh, region: str, **kw: object) -> Path:
    urls = {r: mesh.urls[r] for r in ("eu-west", "eu-north", "us-east")}
    return mesh_config(tmp_path / f"{region}.yaml", urls, region, **kw)


@pytest.mark.parametrize("skewed", ["source", "target"])
def test_lag_is_unaffected_by_a_skewed_clock(pg_clusters, skewed: str) -> None:
    """One region's PostgreSQL runs under libfaketime ten minutes behind; the lag the
    target reports for a one-second-old change is still about one second."""
    libs = glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
    assert libs, "libfaketime not found: install Debian's `faketime` package (.ci/run does)"
    env = {"LD_PRELOAD": libs[0], "FAKETIME": "-10m", "DONT_FAKE_MONOTONIC": "1"}
    normal = pg_clusters["ap-south"]
    with LocalCluster("skewed", fast=True, env=env) as odd:
        src_cluster, tgt_cluster = (odd, normal) if skewed == "source" else (normal, odd)
        src = src_cluster.create_database(f"skew_src_{skewed}")
        tgt = tgt_cluster.create_database(f"skew_tgt_{skewed}")
        try:
            migrate(src, "eu-west")
            migrate(tgt, "us-east")
            with psycopg.connect(odd.url(), autocommit=True) as c:
                skew = time.time() - float(c.execute(
                    "SELECT extract(epoch FROM clock_timestamp())").fetchone()[0])
            assert 590 < skew < 610                       # really ten minutes behind
            metrics = Metrics()
            link = new_link(region="us-east", peer="eu-west", peer_conninfo=src,
                            local_conninfo=tgt, policy=lambda: load_policy(POLICIES),
                            metrics=metrics)
            link.run_once()                               # initial load (empty)
            with psycopg.connect(src, autocommit=True) as c:
                c.execute("INSERT INTO contact (lastname) VALUES ('Skew')")
            time.sleep(1.0)
            batch = link.run_once()
            assert batch.rows == 1
            assert 0.9 < batch.lag_seconds < 10, batch.lag_seconds
            assert metrics.registry.get_sample_value(
                "regionsync_lag_seconds", {"source": "eu-west", "target": "us-east"}) == 0.0
            link.close()
        finally:
            for cluster, name in ((src_cluster, f"skew_src_{skewed}"),
                                  (tgt_cluster, f"skew_tgt_{skewed}")):
                cluster.drop_database(name)


def test_lag_rises_while_a_peer_is_unreachable() -> None:
    m = Metrics()
    h = m.peer("eu-west", "eu-north", poll_interval=0.1)
    h.read(0.0, 0)
    h.applied()
    assert m.registry.get_sample_value("regionsync_lag_seconds",
                                       {"source": "eu-west", "target": "eu-north"}) == 0.0
    h.failed("OperationalError: connection refused", unreachable=True)
    time.sleep(2.5)
    assert m.registry.get_sample_value("regionsync_lag_seconds",
                                       {"source": "eu-west", "target": "eu-north"}) > 2.0


def test_one_leader_per_region_and_the_standby_takes_over(mesh: Mesh) -> None:
    first = Daemon(region_config(mesh, "eu-north"))
    second = Daemon(region_config(mesh, "eu-north"))
    first.start()
    second.start()
    try:
        assert first.is_leader and not second.is_leader
        assert second.metrics.registry.get_sample_value(
            "regionsync_leader", {"region": "eu-north"}) == 0.0
        contact(mesh.conn("eu-west"), "OnlyOnce")
        wait_for(lambda: mesh.one("eu-north", "SELECT count(*) FROM contact") == 1)
        assert second.metrics.registry.get_sample_value(
            "regionsync_changes_applied_total",
            {"source": "eu-west", "target": "eu-north", "table": "contact", "op": "insert"}) \
            is None
        # a hot standby: connections open and schemas read, ready to apply at once
        standby = second.link("eu-west")
        wait_for(lambda: standby.conns.session is not None
                 and len(standby.conns.session.lanes) == 2)
        assert not any(c.closed for c in (standby.conns.session.target,
                                          *standby.conns.session.lane_conns))
        first.stop()
        wait_for(lambda: second.is_leader, 10)
        contact(mesh.conn("eu-west"), "AfterFailover")
        wait_for(lambda: mesh.one("eu-north", "SELECT count(*) FROM contact") == 2)
        assert second.metrics.registry.get_sample_value(
            "regionsync_leader", {"region": "eu-north"}) == 1.0
    finally:
        first.stop()
        second.stop()


def test_status_endpoint_and_command(mesh: Mesh, tmp_path: Path) -> None:
    port = free_port()
    daemon = Daemon(region_config(mesh, "eu-north", port))
    daemon.start()
    try:
        contact(mesh.conn("eu-west"), "Status")
        wait_for(lambda: mesh.one("eu-north", "SELECT count(*) FROM contact") == 1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
            body = json.loads(r.read())
        assert body["region"] == "eu-north" and body["role"] == "leader"
        west = body["peers"]["eu-west"]
        assert west["changes_applied"] >= 1 and west["reachable"] is True
        assert west["lag_seconds"] < 5 and "token" in west
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
            assert b"leader" in r.read()
    finally:
        daemon.stop()
    cfg = config_file(tmp_path, mesh, "eu-north")
    contact(mesh.conn("eu-west"), "Pending")   # applied by nobody now: backlog 1
    time.sleep(1.0)                             # ... and at least a second old
    out = cli("status", "--config", str(cfg), "--json")
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    assert st["peers"]["eu-west"]["backlog"] == 1
    assert 0.9 <= st["peers"]["eu-west"]["lag_seconds"] < 30
    assert st["peers"]["us-east"]["reachable"] is True
    table = cli("status", "--config", str(cfg))
    assert "eu-west" in table.stdout and "backlog" in table.stdout


def test_dead_letter_and_conflict_commands(mesh: Mesh, tmp_path: Path) -> None:
    west, north = mesh.conn("eu-west"), mesh.conn("eu-north")
    aid = account(west, "DLQ-1")
    mesh.pull("eu-north", "eu-west")
    cid = contact(north, "Orphan", accountid=aid)
    mesh.pull("us-east", "eu-north")          # its account has not reached us-east yet
    cfg = config_file(tmp_path, mesh, "us-east")
    listed = cli("dlq", "list", "--config", str(cfg))
    assert listed.returncode == 0 and "23503" in listed.stdout and "contact" in listed.stdout
    ident = mesh.one("us-east", "SELECT id FROM sync.dead_letter")
    shown = json.loads(cli("dlq", "show", str(ident), "--config", str(cfg)).stdout)
    assert shown["pk"] == str(cid) and shown["retryable"] is True
    failing = cli("dlq", "retry", str(ident), "--config", str(cfg))
    assert failing.returncode == 1 and "still failing 1" in failing.stdout
    mesh.pull("us-east", "eu-west")            # the parent arrives
    fixed = cli("dlq", "retry", "--all", "--config", str(cfg))
    assert fixed.returncode == 0 and "resolved 1" in fixed.stdout
    assert mesh.one("us-east", "SELECT count(*) FROM contact") == 1
    # discard
    mesh.conn("us-east").execute("ALTER TABLE account ADD CONSTRAINT account_not_refused "
                                 "CHECK (name <> 'refused') NOT VALID")
    account(west, "REF-1", "refused")
    mesh.pull("us-east", "eu-west")
    assert "discarded 1" in cli("dlq", "discard", "--all", "--config", str(cfg)).stdout
    assert mesh.one("us-east", "SELECT count(*) FROM sync.dead_letter") == 0
    # conflicts: the same contact edited in two regions; eu-west's edit loses
    mesh.sync()
    a, b = mesh.new_conn("eu-west"), mesh.new_conn("eu-north")
    a.execute("UPDATE contact SET firstname = 'west' WHERE contactid = %s", (cid,))
    b.execute("UPDATE contact SET firstname = 'north' WHERE contactid = %s", (cid,))
    mesh.sync()
    conflicts = cli("conflicts", "list", "--config", str(config_file(tmp_path, mesh, "eu-west")))
    assert conflicts.returncode == 0, conflicts.stderr
    row = [line for line in conflicts.stdout.splitlines() if str(cid)[:8] in line]
    assert row and "eu-west" in row[0] and "eu-north" in row[0] and "firstname" in row[0]


def test_resync_logs_progress_and_json_logs_carry_fields(mesh: Mesh, tmp_path: Path) -> None:
    west = mesh.conn("eu-west")
    west.execute("INSERT INTO contact (lastname, medical_notes) "
                 "SELECT 'R' || g, 'secret' FROM generate_series(1, 1200) g")
    cfg = config_file(tmp_path, mesh, "eu-north", page_size=500)
    out = cli("--log-format", "json", "resync", "--peer", "eu-west", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert "resync from eu-west done: 1200 row(s)" in out.stdout
    lines = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    progress = [entry for entry in lines if entry.get("total") == 1200]
    assert [entry["rows"] for entry in progress][-1] == 1200
    assert all(entry["peer"] == "eu-west" for entry in progress)
    assert "secret" not in out.stderr
    assert mesh.one("eu-north", "SELECT count(*) FROM contact") == 1200


def test_resync_shows_a_progress_bar_on_a_terminal(mesh: Mesh, tmp_path: Path) -> None:
    import os
    import pty
    mesh.conn("eu-west").execute("INSERT INTO contact (lastname) "
                                 "SELECT 'T' || g FROM generate_series(1, 3000) g")
    cfg = config_file(tmp_path, mesh, "eu-north", page_size=500)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "sync.cli", "resync", "--peer", "eu-west",
                             "--config", str(cfg)], stdout=subprocess.PIPE, stderr=slave,
                            text=True, env={**os.environ, "COLUMNS": "160"})
    os.close(slave)
    screen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        screen += chunk
    out, _ = proc.communicate(timeout=60)
    os.close(master)
    assert proc.returncode == 0
    text = screen.decode(errors="replace")
    assert "resync from eu-west" in text and "3000/3000" in text and "rows/s" in text
    assert "ETA" in text
    assert "done: 3000 row(s)" in out
