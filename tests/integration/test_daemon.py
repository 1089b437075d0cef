"""The daemon as operators run it: `regionsync migrate` and `regionsync run` processes."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg

from sync.db.migrate import alembic_dir
from sync.testing.cluster import free_port
from tests.fix_daemons import start_daemon, stop_daemon, wait_for, write_config
from tests.fix_pg import POLICIES, Mesh
from tests.integration.helpers import account, cli, contact


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _healthy(port: int) -> bool:
    try:
        return get(port, "/healthz")[0] == 200
    except OSError:
        return False



def _head() -> str:
    """The newest migration in the tree (not a number written here)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(alembic_dir()))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None and head >= "0017"
    return head


def test_migrate_is_idempotent(pg_clusters, tmp_path: Path) -> None:
    cluster = pg_clusters["ap-south"]
    url = cluster.create_database("migrate_me")
    try:
        cfg = write_config(tmp_path / "r.yaml", "ap-south", url, {}, 0)
        for _ in range(2):
            proc = cli("migrate", "--config", str(cfg))
            assert proc.returncode == 0, proc.stderr
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (
                _head(),)
            assert conn.execute("SELECT region FROM sync.settings").fetchone() == ("ap-south",)
        wrong = write_config(tmp_path / "w.yaml", "eu-west", url, {}, 0)
        proc = cli("migrate", "--config", str(wrong))
        assert proc.returncode != 0 and "belongs to region 'ap-south'" in proc.stderr
    finally:
        cluster.drop_database("migrate_me")


def test_daemon_syncs_exports_metrics_and_stops_on_sigterm(mesh: Mesh, tmp_path: Path) -> None:
    west = mesh.conn("eu-west")
    aid = account(west, "D-1")
    for i in range(5):
        contact(west, f"Bulk{i}", accountid=aid)
    west.execute("""INSERT INTO contact (lastname, accountid, medical_notes)
                    SELECT 'Many' || g, %s, 'secret' FROM generate_series(1, 3000) g""", (aid,))
    port = free_port()
    # the peer URL comes from the environment, as a secret would
    cfg = write_config(tmp_path / "north.yaml", "eu-north", mesh.urls["eu-north"],
                       {"eu-west": "${WEST_URL}"}, port, page_size=200)
    log = (tmp_path / "daemon.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "sync.cli", "run", "--config", str(cfg)],
                            stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "WEST_URL": mesh.urls["eu-west"]})
    try:
        north = mesh.conn("eu-north")
        wait_for(lambda: north.execute("SELECT count(*) FROM contact").fetchone()[0] == 3005)
        assert get(port, "/healthz")[0] == 200
        status, body = get(port, "/readyz")
        assert status == 200 and "policy" in body
        contact(west, "Later")
        wait_for(lambda: north.execute("SELECT count(*) FROM contact").fetchone()[0] == 3006)
        # the batch's counters are recorded just after its commit
        wait_for(lambda: 'target="eu-north"} 3006.0' in get(port, "/metrics")[1])
        _, metrics = get(port, "/metrics")
        applied = re.search(r'^regionsync_changes_applied_total\{op="insert",source="eu-west",'
                            r'table="contact",target="eu-north"\} (\S+)$', metrics, re.M)
        assert applied and float(applied.group(1)) == 3006
        lag = re.search(r'^regionsync_lag_seconds\{source="eu-west",target="eu-north"\} (\S+)$',
                        metrics, re.M)
        assert lag and float(lag.group(1)) < 5
        assert 'regionsync_policy_info{sha="' in metrics
        assert "secret" not in metrics and "Bulk" not in metrics
        assert north.execute("SELECT count(*) FROM contact WHERE medical_notes IS NOT NULL"
                             ).fetchone()[0] == 0
        # SIGTERM in the middle of a drain: the page in flight commits, exit 0
        west.execute("UPDATE contact SET firstname = 'v2'")
        time.sleep(0.3)   # let the drain start: the signal must land mid-drain
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    text = (tmp_path / "daemon.log").read_text()
    assert "received SIGTERM" in text and "stopped" in text
    assert "secret" not in text
    # restart: whatever was not finished arrives, nothing twice
    with (tmp_path / "restart.log").open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "sync.cli", "run", "--config",
                                 str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "WEST_URL": mesh.urls["eu-west"]})
    try:
        wait_for(lambda: mesh.rows("eu-north", "contact") == mesh.rows("eu-west", "contact"))
        wait_for(lambda: _healthy(port))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = None
    assert code == 0, (tmp_path / "restart.log").read_text()
    # one journal entry per insert and per update at the receiver: nothing applied twice
    assert mesh.one("eu-north", "SELECT count(*) FROM sync.change_log WHERE op = 'u'") == 3006
    assert mesh.one("eu-north", "SELECT count(*) FROM sync.change_log WHERE op = 'i'") == 3007


def test_run_refuses_a_bad_config_with_file_line_and_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("region: eu-west\ndatabase:\n  url: postgresql://x@127.0.0.1/db\n"
                   "poll_intervall: 3\n")
    proc = cli("run", "--config", str(cfg))
    assert proc.returncode == 2
    assert f"{cfg}:4: poll_intervall: unknown key" in proc.stderr


def test_policy_check_against_live_schema(mesh: Mesh, tmp_path: Path) -> None:
    pol = tmp_path / "pol"
    pol.mkdir()
    (pol / "a.yaml").write_text("rules:\n  contact:\n    columns: [lastname, emial]\n")
    cfg = write_config(tmp_path / "r.yaml", "eu-west", mesh.urls["eu-west"], {}, 0)
    cfg.write_text(cfg.read_text().replace(f"policy_dir: {POLICIES}", f"policy_dir: {pol}"))
    proc = cli("policy", "check", "--config", str(cfg))
    assert proc.returncode == 2   # a policy file is configuration
    assert f"{pol / 'a.yaml'}:3: rules.contact.columns[1]: column contact.emial does not exist" \
        in proc.stderr
    ok = cli("policy", "check", "--config", str(cfg.with_name("r.yaml")),
                    "--policy-dir", str(POLICIES))
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout



def test_metrics_and_status_require_the_token_when_one_is_set(mesh: Mesh,
                                                              tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path / "n.yaml", "eu-north", mesh.urls["eu-north"],
                       {"eu-west": mesh.urls["eu-west"]}, port)
    cfg.write_text(cfg.read_text() + "  token_env: RS_METRICS_TOKEN\n")
    proc = start_daemon(cfg, tmp_path / "d.log", env={"RS_METRICS_TOKEN": "s3cr3t-token"})
    try:
        wait_for(lambda: _healthy(port))
        assert get(port, "/metrics")[0] == 401
        assert get(port, "/status")[0] == 401
        assert get(port, "/readyz")[0] in (200, 503)

        def with_token(path: str, token: str) -> int:
            req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                         headers={"Authorization": f"Bearer {token}"})
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code
        assert with_token("/metrics", "s3cr3t-token") == 200
        assert with_token("/status", "s3cr3t-token") == 200
        assert with_token("/metrics", "wrong") == 401
    finally:
        assert stop_daemon(proc) == 0
    assert "s3cr3t-token" not in (tmp_path / "d.log").read_text()


def test_an_idle_mesh_writes_nothing(mesh: Mesh,
                                      tmp_path: Path) -> None:
    from tests.fix_daemons import mesh_daemons

    contact(mesh.conn("eu-west"), "Once")
    urls = {r: mesh.urls[r] for r in ("eu-west", "eu-north")}

    def written(region: str) -> tuple:
        """What the daemons write: their tokens (a new row version at every write), the
        integration log and the journal. (The database's own xid counter is no measure:
        autovacuum may analyze a catalog in the window and take one.)"""
        return (mesh.conn(region).execute(
                    "SELECT array_agg(xmin::text ORDER BY peer) FROM sync.peer_state"
                ).fetchone()[0],
                mesh.one(region, "SELECT count(*) FROM sync.integration_log"),
                mesh.one(region, "SELECT count(*) FROM sync.change_set"))

    with mesh_daemons(tmp_path, urls, poll_interval=0.1):
        wait_for(lambda: mesh.one("eu-north", "SELECT count(*) FROM contact") == 1)
        # the first empty batches may still move each token once; then nothing moves
        wait_for(lambda: mesh.one("eu-north", "SELECT count(*) FROM sync.peer_state") == 1
                 and mesh.one("eu-west", "SELECT count(*) FROM sync.peer_state") == 1)
        time.sleep(1.0)
        before = {r: written(r) for r in urls}
        time.sleep(3.0)           # 30 idle polls per link: what they write is the test
        assert {r: written(r) for r in urls} == before


def test_a_failing_peer_opens_its_breaker_and_a_probe_closes_it(mesh: Mesh,
                                                                tmp_path: Path) -> None:
    import json

    port = free_port()
    cfg = write_config(tmp_path / "n.yaml", "eu-north", mesh.urls["eu-north"],
                       {"us-east": mesh.urls["us-east"], "eu-west": mesh.urls["eu-west"]},
                       port, poll_interval=0.1,
                       extra={"breaker": "{failures: 2, open_seconds: 2}"})
    proc = start_daemon(cfg, tmp_path / "d.log")
    peer = mesh.clusters["us-east"]

    def breaker(name: str) -> str:
        return json.loads(get(port, "/status")[1])["peers"][name].get("breaker", "")

    try:
        wait_for(lambda: _healthy(port) and breaker("us-east") == "closed")
        mesh.conn("us-east").close()
        peer.stop()
        wait_for(lambda: breaker("us-east") == "open", 60)
        assert 'regionsync_breaker_state{source="us-east",target="eu-north"} 2.0' in \
            get(port, "/metrics")[1]
        assert breaker("eu-west") == "closed"            # the other link goes on
        later = contact(mesh.conn("eu-west"), "MeanWhile")
        wait_for(lambda: mesh.one("eu-north", "SELECT count(*) FROM contact WHERE "
                                  "contactid = %s", (later,)) == 1)
        peer.restart()
        wait_for(lambda: breaker("us-east") == "closed", 60)
        back = contact(mesh.conn("us-east"), "Back")
        wait_for(lambda: mesh.one("eu-north", "SELECT count(*) FROM contact WHERE "
                                  "contactid = %s", (back,)) == 1)
    finally:
        with contextlib.suppress(Exception):
            peer.restart()
        assert stop_daemon(proc) == 0
    assert "circuit breaker open after 2 failed batches" in (tmp_path / "d.log").read_text()


def test_a_peer_back_from_a_restart_is_probed_within_seconds(mesh: Mesh,
                                                             tmp_path: Path) -> None:
    """With the default open_seconds (60 s) a peer's restart used to keep its link waiting
    a full minute; the first probe now comes after first_probe_seconds (5 s)."""
    import json

    port = free_port()
    cfg = write_config(tmp_path / "n.yaml", "eu-north", mesh.urls["eu-north"],
                       {"us-east": mesh.urls["us-east"]}, port, poll_interval=0.1,
                       extra={"breaker": "{failures: 2}"})
    proc = start_daemon(cfg, tmp_path / "d.log")
    peer = mesh.clusters["us-east"]

    def breaker() -> str:
        return json.loads(get(port, "/status")[1])["peers"]["us-east"].get("breaker", "")

    try:
        wait_for(lambda: _healthy(port) and breaker() == "closed")
        mesh.conn("us-east").close()
        peer.stop()
        wait_for(lambda: breaker() == "open", 60)
        peer.restart()
        restarted = time.monotonic()
        back = contact(mesh.conn("us-east"), "Back")
        wait_for(lambda: mesh.one("eu-north", "SELECT count(*) FROM contact WHERE "
                                  "contactid = %s", (back,)) == 1, 30)
        assert time.monotonic() - restarted < 20, "waited for open_seconds, not the probe"
    finally:
        with contextlib.suppress(Exception):
            peer.restart()
        assert stop_daemon(proc) == 0
