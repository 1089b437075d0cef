"""The mesh grows and shrinks while it runs: a region joins while the others write, the
daemons reload their configs on SIGHUP without dropping the links that did not change, and
a retired region's changes reach every survivor from whichever survivor holds them.

Every daemon runs as `regionsync run`, reads its peers as the roles they made for it, and
is told of changes the way operators do it: `regionsync peers add|retire` and a SIGHUP.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import psycopg
import psycopg.conninfo

from sync.source.egress import role_for
from sync.testing.cluster import free_port
from tests.fix_daemons import start_daemon, stop_daemon, wait_for, write_config
from tests.fix_pg import Mesh
from tests.integration.helpers import cli, contact

OLD = ("eu-west", "eu-north", "us-east")


def as_role(mesh: Mesh, owner: str, destination: str) -> str:
    """``owner``'s database as the role it made for ``destination``."""
    return psycopg.conninfo.make_conninfo(mesh.urls[owner], user=role_for(destination))


def status(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
        return json.loads(r.read())


def link_pids(mesh: Mesh, region: str, peers: tuple[str, ...]) -> dict[str, list[int]]:
    """The backend pids, at each peer, of ``region``'s link reading it."""
    out = {}
    for peer in peers:
        with psycopg.connect(mesh.urls[peer], autocommit=True) as c:
            out[peer] = sorted(r[0] for r in c.execute(
                "SELECT pid FROM pg_stat_activity WHERE usename = %s AND datname = "
                "current_database()", (role_for(region),)))
    return out


class Writers:
    """One writer per region: new contacts (with a medical note that must stay home) and
    phone edits of contacts it knows, until stopped."""

    def __init__(self, mesh: Mesh, regions: tuple[str, ...]) -> None:
        self.mesh = mesh
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, args=(r, i), daemon=True)
                        for i, r in enumerate(regions)]

    def _run(self, region: str, seed: int) -> None:
        rnd = random.Random(seed)
        mine: list[uuid.UUID] = []
        try:
            with psycopg.connect(self.mesh.urls[region], autocommit=True) as conn:
                n = 0
                while not self.stop.is_set():
                    n += 1
                    if not mine or rnd.random() < 0.5:
                        mine.append(contact(conn, f"W{region}{n}",
                                            medical=f"MEDICAL-{region}-{n}"))
                    else:
                        conn.execute("UPDATE contact SET telephone1 = %s WHERE contactid = %s",
                                     (f"+{n}", rnd.choice(mine)))
                    time.sleep(0.02)
        except BaseException as exc:   # reported by the test, not lost in a thread
            self.errors.append(exc)

    def __enter__(self) -> Writers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def synced(mesh: Mesh, region: str) -> list[tuple]:
    """What every region may hold of contacts: the columns ap-south is sent."""
    return mesh.rows(region, "contact", destination="ap-south")


def test_a_fourth_region_joins_while_three_write(mesh: Mesh, tmp_path: Path) -> None:
    ports = {r: free_port() for r in (*OLD, "ap-south")}
    configs = {}
    for r in OLD:
        configs[r] = write_config(tmp_path / f"{r}.yaml", r, mesh.urls[r],
                                  {p: as_role(mesh, p, r) for p in OLD if p != r}, ports[r])
        made = cli("roles", "--config", str(configs[r]), "--apply")
        assert made.returncode == 0, made.stderr
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for r in OLD:
            procs[r] = start_daemon(configs[r], tmp_path / f"{r}.log")
        with Writers(mesh, OLD) as writers:
            wait_for(lambda: all(status(ports[r])["peers"][p].get("token")
                                 for r in OLD for p in OLD if p != r), 60, "three linked")
            before = {r: link_pids(mesh, r, tuple(p for p in OLD if p != r)) for r in OLD}
            assert all(pids for r in OLD for pids in before[r].values())
            # a bad config is refused in one line; the running one stays
            good = configs["eu-west"].read_text()
            configs["eu-west"].write_text(good + "peers_typo: 1\n")
            procs["eu-west"].send_signal(signal.SIGHUP)
            refused = wait_for(lambda: (status(ports["eu-west"]).get("reload") or {}), 30)
            assert refused["ok"] is False and "peers_typo" in refused["error"]
            configs["eu-west"].write_text(good)
            # ap-south joins: its own config lists the three; each of them adds it
            configs["ap-south"] = write_config(
                tmp_path / "ap-south.yaml", "ap-south", mesh.urls["ap-south"],
                {p: as_role(mesh, p, "ap-south") for p in OLD}, ports["ap-south"])
            made = cli("roles", "--config", str(configs["ap-south"]), "--apply")
            assert made.returncode == 0, made.stderr
            for r in OLD:
                added = cli("peers", "add", "ap-south", "--config", str(configs[r]),
                            "--url", as_role(mesh, "ap-south", r))
                assert added.returncode == 0, added.stderr
                assert "ap-south: reachable, protocol 3" in added.stdout, added.stdout
                assert f"with url postgresql://{role_for('ap-south')}@" in added.stdout
                procs[r].send_signal(signal.SIGHUP)
            procs["ap-south"] = start_daemon(configs["ap-south"], tmp_path / "ap-south.log")
            for r in OLD:
                reload = wait_for(lambda r=r: (status(ports[r]).get("reload") or {}).get(
                    "added"), 30, f"{r} reloaded")
                assert reload == ["ap-south"]
                assert sorted(status(ports[r])["reload"]["kept"]) == sorted(
                    p for p in OLD if p != r)
            time.sleep(3)      # the four write on, linked both ways
        assert not writers.errors, writers.errors
        # a write in the new region reaches everyone
        new = contact(mesh.conn("ap-south"), "FromApSouth", medical="MEDICAL-ap-south-0")
        for r in OLD:
            wait_for(lambda r=r: mesh.one(r, "SELECT count(*) FROM contact WHERE contactid = %s",
                                          (new,)) == 1, 60, f"{r} has ap-south's write")
        wait_for(lambda: all(synced(mesh, r) == synced(mesh, "eu-west")
                             for r in (*OLD, "ap-south")), 90, "four regions converged")
        assert len(synced(mesh, "ap-south")) > 100
        # the existing links were never restarted: same backends at their peers
        after = {r: link_pids(mesh, r, tuple(p for p in OLD if p != r)) for r in OLD}
        assert after == before
    finally:
        codes = {r: stop_daemon(p) for r, p in procs.items()}
    assert set(codes.values()) == {0}, codes
    for r in (*OLD, "ap-south"):
        # no medical value crossed: every note a region holds is its own
        assert mesh.one(r, "SELECT count(*) FROM contact WHERE medical_notes LIKE 'MEDICAL-%%' "
                           "AND medical_notes NOT LIKE %s", (f"MEDICAL-{r}-%",)) == 0
        log = (tmp_path / f"{r}.log").read_text()
        assert "Traceback" not in log and "link stopped" not in log, log
    assert "reload refused, the running configuration stays" in (
        tmp_path / "eu-west.log").read_text()


def test_a_retired_regions_changes_reach_every_survivor(mesh: Mesh, tmp_path: Path) -> None:
    """us-east writes, and only eu-west hears of it; us-east is then gone for good. After
    `peers retire us-east` at both survivors, eu-north holds every change us-east wrote
    (from eu-west), its roles and records are gone, and eu-west's journal, which waited
    for us-east's token, is pruned."""
    west, north, east = "eu-west", "eu-north", "us-east"
    for r in (west, north, east):
        cfg = write_config(tmp_path / f"{r}-roles.yaml", r, mesh.urls[r],
                           {p: mesh.urls[p] for p in (west, north, east) if p != r})
        made = cli("roles", "--config", str(cfg), "--apply")
        assert made.returncode == 0, made.stderr
    x = contact(mesh.conn(west), "Shared")
    doomed = contact(mesh.conn(west), "Doomed")
    mesh.sync([west, north, east])
    # us-east's last words, heard by eu-west only: a new contact, a phone edit of x, a delete
    born = contact(mesh.conn(east), "BornInUsEast", medical="MEDICAL-us-east")
    mesh.conn(east).execute("UPDATE contact SET telephone1 = '+1-555' WHERE contactid = %s",
                            (x,))
    mesh.conn(east).execute("DELETE FROM contact WHERE contactid = %s", (doomed,))
    mesh.pull(west, east)
    # eu-north edits another column of x later: at eu-west, x's newest version is eu-north's,
    # and us-east's phone is found by its column's version, not the row's
    mesh.conn(north).execute("UPDATE contact SET firstname = 'Nora' WHERE contactid = %s", (x,))
    mesh.pull(west, north)
    assert mesh.one(north, "SELECT telephone1 FROM contact WHERE contactid = %s", (x,)) is None
    gone_port = free_port()    # us-east's database is decommissioned: nothing answers
    dead = psycopg.conninfo.make_conninfo(mesh.urls[east], port=gone_port, connect_timeout=1)
    ports = {west: free_port(), north: free_port()}
    retention = {"retention": "{journal: 1s, expire_after: 1d, interval: 1s}"}
    configs = {r: write_config(tmp_path / f"{r}.yaml", r, mesh.urls[r],
                               {other: as_role(mesh, other, r), east: dead}, ports[r],
                               extra=retention)
               for r, other in ((west, north), (north, west))}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for r in (west, north):
            procs[r] = start_daemon(configs[r], tmp_path / f"{r}.log")
        wait_for(lambda: status(ports[north])["peers"][west].get("token"), 60, "north linked")
        time.sleep(4)          # rounds of pruning: us-east never consumed eu-west's journal
        waiting = mesh.one(west, "SELECT count(*) FROM sync.change_set")
        assert waiting > 0
        for r in (north, west):
            retired = cli("peers", "retire", east, "--config", str(configs[r]))
            assert retired.returncode == 0, retired.stderr
            assert f"{east} retired here: role dropped" in retired.stdout, retired.stdout
            procs[r].send_signal(signal.SIGHUP)
            assert east not in configs[r].read_text()
        for r in (west, north):
            wait_for(lambda r=r: (status(ports[r]).get("reload") or {}).get("removed"), 30)
            assert status(ports[r])["reload"]["removed"] == [east]
            assert east not in status(ports[r])["peers"]
            with urllib.request.urlopen(f"http://127.0.0.1:{ports[r]}/metrics") as m:
                exported = m.read().decode()
            assert f'source="{west if r == north else north}"' in exported
            assert f'source="{east}"' not in exported and f'peer="{east}"' not in exported
        # everything us-east wrote that a survivor held, everywhere
        assert mesh.one(north, "SELECT lastname FROM contact WHERE contactid = %s",
                        (born,)) == "BornInUsEast"
        assert mesh.one(north, "SELECT medical_notes FROM contact WHERE contactid = %s",
                        (born,)) is None
        assert mesh.conn(north).execute(
            "SELECT telephone1, firstname FROM contact WHERE contactid = %s", (x,)
        ).fetchone() == ("+1-555", "Nora")
        assert mesh.one(north, "SELECT count(*) FROM contact WHERE contactid = %s",
                        (doomed,)) == 0
        wait_for(lambda: synced(mesh, north) == synced(mesh, west), 30, "survivors agree")
        # its roles and records are gone at both survivors; retention no longer waits
        for r in (west, north):
            assert mesh.one(r, "SELECT count(*) FROM pg_roles WHERE rolname = %s",
                            (role_for(east),)) == 0
            assert mesh.one(r, "SELECT count(*) FROM sync.peer_state WHERE peer = %s",
                            (east,)) == 0
            assert mesh.one(r, "SELECT count(*) FROM sync.egress_role WHERE region = %s",
                            (east,)) == 0
        wait_for(lambda: mesh.one(west, "SELECT count(*) FROM sync.change_set "
                                        "WHERE changed_at < now() - interval '3 seconds'") == 0,
                 30, "eu-west's journal pruned")
        again = cli("peers", "retire", east, "--config", str(configs[west]))
        assert again.returncode == 0 and "role already gone" in again.stdout, again.stdout
    finally:
        codes = {r: stop_daemon(p) for r, p in procs.items()}
    assert set(codes.values()) == {0}, codes


def test_every_sighup_and_the_sigterm_are_handled_within_a_second(mesh: Mesh,
                                                                  tmp_path: Path) -> None:
    """The kernel hands a process's signal to any of its threads; the daemon's main thread
    must still run the handler soon (it once slept until the next signal)."""
    port = free_port()
    cfg = write_config(tmp_path / "eu-west.yaml", "eu-west", mesh.urls["eu-west"],
                       {p: mesh.urls[p] for p in ("eu-north", "us-east")}, port,
                       poll_interval=0.05)
    proc = start_daemon(cfg, tmp_path / "eu-west.log")
    try:
        wait_for(lambda: status(port)["peers"]["eu-north"].get("token"), 60, "linked")
        seen = None
        for _ in range(12):
            contact(mesh.conn("eu-north"), "Busy")    # threads at work when the signal lands
            proc.send_signal(signal.SIGHUP)
            started = time.monotonic()
            at = wait_for(lambda seen=seen: (
                (status(port).get("reload") or {}).get("at") != seen
                and status(port)["reload"]["at"]), 5, "the reload")
            assert time.monotonic() - started < 2.0
            seen = at
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
    finally:
        stop_daemon(proc)
