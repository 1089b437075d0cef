"""Every command fails in one line that names the cause, with a documented exit code
(2: usage or configuration, 1: runtime), and never a traceback; passwords from the
environment or a file work for every command; a bad row never stops a page."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from sync.testing.cluster import LocalCluster, free_port
from tests.fix_daemons import start_daemon, stop_daemon, wait_for, write_config
from tests.fix_pg import Mesh
from tests.integration.helpers import cli, contact

PASSWORD = "Rs%zzSecret-Pw"


def one_line_failure(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == code, out
    assert "Traceback" not in out, out
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, out
    for needle in needles:
        assert needle in lines[0], out
    return lines[0]


@pytest.fixture
def password_role(pg_clusters: dict[str, LocalCluster]) -> Iterator[tuple[LocalCluster, str]]:
    """A database on ap-south whose role logs in with a password over TCP (scram)."""
    cluster = pg_clusters["ap-south"]
    db = f"pw{uuid.uuid4().hex[:8]}"
    url = cluster.create_database(db)
    hba = cluster.data / "pg_hba.conf"
    original = hba.read_text()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS rs_pw")
        conn.execute("CREATE ROLE rs_pw LOGIN SUPERUSER PASSWORD 'Rs%zzSecret-Pw'")
        hba.write_text("host all rs_pw 127.0.0.1/32 scram-sha-256\n" + original)
        conn.execute("SELECT pg_reload_conf()")
    try:
        yield cluster, f"postgresql://rs_pw@127.0.0.1:{cluster.port}/{db}"
    finally:
        hba.write_text(original)
        with psycopg.connect(cluster.url(), autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
        cluster.drop_database(db)


@pytest.mark.parametrize("how", ["password_env", "password_file"])
def test_migrate_status_and_run_with_a_password_from_env_or_file(
        password_role: tuple[LocalCluster, str], tmp_path: Path, how: str) -> None:
    _, url = password_role
    secret = tmp_path / "secret"
    secret.write_text(PASSWORD + "\n")
    value = "RS_TEST_PW" if how == "password_env" else str(secret)
    env = {"RS_TEST_PW": PASSWORD}
    port = free_port()
    cfg = write_config(tmp_path / "r.yaml", "ap-south", url, {}, port,
                       database_extra={how: value})
    proc = cli("migrate", "--config", str(cfg), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = cli("status", "--config", str(cfg), "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["region"] == "ap-south"
    daemon = start_daemon(cfg, tmp_path / "d.log", env=env)
    try:
        wait_for(lambda: b"syncing from" in (tmp_path / "d.log").read_bytes())
    finally:
        assert stop_daemon(daemon) == 0
    assert PASSWORD not in (tmp_path / "d.log").read_text()
    # the wrong password: one line, exit 1, neither secret anywhere
    secret.write_text("wrong\n")
    proc = cli("status", "--config", str(cfg), env={"RS_TEST_PW": "wrong"})
    line = one_line_failure(proc, 1, "password authentication failed")
    assert PASSWORD not in line and "wrong" not in line


def test_cli_error_matrix(mesh: Mesh, tmp_path: Path) -> None:
    west = mesh.urls["eu-west"]
    good = write_config(tmp_path / "good.yaml", "eu-west", west, {"eu-north":
                                                                  mesh.urls["eu-north"]})
    # a config error: the same exit code (2) from run and status, with file:line: key
    typo = tmp_path / "typo.yaml"
    typo.write_text(good.read_text() + "poll_intervall: 3\n")
    for command in ("run", "status"):
        one_line_failure(cli(command, "--config", str(typo)), 2,
                         f"{typo}:", "poll_intervall: unknown key (did you mean "
                                     "'poll_interval'?)")
    # an unset ${VAR} in a peer URL, and an unset password_env: file, line and key
    unset = write_config(tmp_path / "unset.yaml", "eu-west", west,
                         {"eu-north": "${RS_NO_SUCH_URL}"})
    for command in ("run", "status"):
        one_line_failure(cli(command, "--config", str(unset)), 2, f"{unset}:",
                         "RS_NO_SUCH_URL is not set")
    nopw = write_config(tmp_path / "nopw.yaml", "eu-west", west, {},
                        database_extra={"password_env": "RS_NO_SUCH_PW"})
    one_line_failure(cli("migrate", "--config", str(nopw)), 2, f"{nopw}:4:",
                     "database.password_env", "RS_NO_SUCH_PW is not set")
    # a URL that does not parse: the password in it is never echoed
    bad_url = write_config(tmp_path / "badurl.yaml", "eu-west",
                           f"postgresql://u:{PASSWORD}@127.0.0.1/db", {})
    line = one_line_failure(cli("status", "--config", str(bad_url)), 2, "invalid database URL")
    assert "Secret" not in line
    bad_port = write_config(tmp_path / "badport.yaml", "eu-west",
                            "postgresql://u@127.0.0.1:99999/db", {})
    one_line_failure(cli("run", "--config", str(bad_port)), 2, "port '99999'")
    # the local database unreachable: status fails in one line (run waits instead)
    down = write_config(tmp_path / "down.yaml", "eu-west",
                        f"postgresql://postgres@127.0.0.1:{free_port()}/x", {})
    one_line_failure(cli("status", "--config", str(down)), 1, "local database")
    # run before migrate: names the fix
    fresh = mesh.clusters["ap-south"].create_database(f"fresh{uuid.uuid4().hex[:6]}")
    unmigrated = write_config(tmp_path / "unmigrated.yaml", "ap-south", fresh, {})
    one_line_failure(cli("run", "--config", str(unmigrated)), 1, "regionsync migrate")
    # policy why: a key that is not a UUID, a region that does not exist
    one_line_failure(cli("policy", "why", "contact", "not-a-uuid", "--to", "eu-north",
                         "--config", str(good)), 2, "not a key of contact")
    cid = contact(mesh.conn("eu-west"), "Why")
    one_line_failure(cli("policy", "why", "contact", str(cid), "--to", "mars",
                         "--config", str(good)), 2, "'mars'", "no such region")
    # a second daemon on a port already taken: which address, and what to do
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = write_config(tmp_path / "busy.yaml", "eu-west", west, {},
                            taken.getsockname()[1])
        one_line_failure(cli("run", "--config", str(busy)), 2,
                         f"127.0.0.1:{taken.getsockname()[1]}", "metrics.port")


def test_a_value_out_of_range_is_dead_lettered_and_the_rest_applied(mesh: Mesh) -> None:
    west, north = mesh.conn("eu-west"), mesh.conn("eu-north")
    # the receiver's type is narrower than the sender's: a text COPY that fails on one value
    north.execute("ALTER TABLE contact ALTER COLUMN statecode TYPE smallint")
    ok = [contact(west, f"Fine{i}") for i in range(3)]
    bad = contact(west, "TooBig")
    west.execute("UPDATE contact SET statecode = 4000000 WHERE contactid = %s", (bad,))
    link = mesh.link("eu-north", "eu-west")
    batch = link.run_once()
    assert batch.dead_letters == {"contact": 1}
    assert {r[0] for r in north.execute("SELECT contactid FROM contact")} == set(ok)
    error, pk = north.execute("SELECT error, pk FROM sync.dead_letter").fetchone()
    assert pk == bad and "4000000" not in error and "out of range" in error
    assert "4000000" not in json.dumps(link.health.last_error if link.health else "")


def test_dlq_retry_retries_exactly_the_named_row(mesh: Mesh, tmp_path: Path) -> None:
    west, north = mesh.conn("eu-west"), mesh.conn("eu-north")
    keys = [contact(west, f"Dl{i}") for i in range(3)]
    mesh.pull("eu-north", "eu-west")
    north.execute("DELETE FROM sync.dead_letter")
    for k in keys:   # three dead letters of this peer, all retryable now
        north.execute("INSERT INTO sync.dead_letter (peer, tablename, pk, op, error, retryable,"
                      " last_failed_at) VALUES ('eu-west', 'contact', %s, 'upsert', 'x', true,"
                      " now() - interval '1 day')", (k,))
    ids = [r[0] for r in north.execute("SELECT id FROM sync.dead_letter ORDER BY id")]
    cfg = write_config(tmp_path / "n.yaml", "eu-north", mesh.urls["eu-north"],
                       {"eu-west": mesh.urls["eu-west"]})
    proc = cli("dlq", "retry", str(ids[2]), "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert "retried 1, resolved 1" in proc.stdout
    left = [r[0] for r in north.execute("SELECT id FROM sync.dead_letter ORDER BY id")]
    assert left == ids[:2]


def test_daemon_waits_out_its_own_database_being_down(mesh: Mesh, tmp_path: Path) -> None:
    import time
    import urllib.error
    import urllib.request

    def readyz() -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return 0

    west = mesh.conn("eu-west")
    port = free_port()
    # recovery is bounded by the breaker's probe interval: short here, to keep the suite so
    cfg = write_config(tmp_path / "n.yaml", "eu-north", mesh.urls["eu-north"],
                       {"eu-west": mesh.urls["eu-west"]}, port,
                       extra={"breaker": "{failures: 5, open_seconds: 3}"})
    log = tmp_path / "d.log"
    daemon = start_daemon(cfg, log)
    local = mesh.clusters["eu-north"]
    try:
        first = contact(west, "Before")
        wait_for(lambda: mesh.one("eu-north", "SELECT count(*) FROM contact WHERE contactid = "
                                  "%s", (first,)) == 1)
        mesh.conn("eu-north").close()
        local.stop()
        wait_for(lambda: readyz() == 503)
        second = contact(west, "During")
        time.sleep(20)            # the outage's length: the fault under test, not a wait
        assert daemon.poll() is None, log.read_text()
        assert readyz() == 503
        local.restart()
        wait_for(lambda: readyz() == 200, timeout=60)
        wait_for(lambda: mesh.one("eu-north", "SELECT count(*) FROM contact WHERE contactid = "
                                  "%s", (second,)) == 1, timeout=60)
    finally:
        with contextlib.suppress(Exception):   # leave the shared cluster running
            local.restart()
        code = stop_daemon(daemon)
    assert code == 0, log.read_text()
    text = log.read_text()
    assert "Traceback" not in text, text
