"""``regionsync demo``: three throwaway regions on this machine, synced by three daemons.

Everything it starts (PostgreSQL clusters, daemon processes, temp files) is removed at
the end, also on Ctrl-C or error.
"""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import psycopg
from psycopg.conninfo import make_conninfo
from ruamel.yaml import YAML

from sync.db import state
from sync.db.catalog import introspect
from sync.db.connect import connect, one_row, scalar
from sync.db.migrate import migrate
from sync.policy import load_policy
from sync.source.egress import apply_egress, local_role_statements, role_for
from sync.testing.cluster import clusters, find_pg_bin, free_port
from sync.testing.verify import converged

REGIONS = ["eu-west", "eu-north", "us-east"]
DAEMON_ROLE = "regionsync_daemon"


def shipped_policy_dir() -> Path:
    package = Path(__file__).resolve().parent.parent      # sync/
    for candidate in (package / "_policies", package.parent / "policies"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("the shipped policies/ directory is not installed")


def write_config(path: Path, region: str, urls: dict[str, str], port: int,
                 policy_dir: Path) -> None:
    cfg = {
        "region": region,
        # its own database as the least-privilege role `regionsync roles` makes (no
        # superuser, not the tables' owner): it cannot change grants, so egress is made
        # by the owner (below) and not by the daemon
        "database": {"url": make_conninfo(urls[region], user=DAEMON_ROLE)},
        "egress": False,
        # each peer is read as the role its owner made for this region (least privilege)
        "peers": [{"name": p, "url": make_conninfo(urls[p], user=role_for(region))}
                  for p in urls if p != region],
        "policy_dir": str(policy_dir),
        "poll_interval": 0.5,
        "page_size": 5000,
        "metrics": {"host": "127.0.0.1", "port": port},
    }
    with path.open("w") as fh:
        YAML().dump(cfg, fh)


def seed(conn: psycopg.Connection, region: str, rows: int) -> None:
    """Dataverse-like data authored in ``region``, with medical data that must stay home."""
    tag = region.replace("-", "").upper()
    conn.execute("""
        INSERT INTO account (accountnumber, name, address1_city, address1_country, revenue)
        SELECT %(tag)s || '-A' || g, 'Account ' || g || ' of ' || %(region)s,
               'City ' || g, %(country)s, g * 1000
        FROM generate_series(1, greatest(%(rows)s / 10, 1)) g""",
                 {"tag": tag, "region": region, "rows": rows,
                  "country": {"eu-west": "IE", "eu-north": "SE"}.get(region, "US")})
    conn.execute("""
        INSERT INTO contact (accountid, firstname, lastname, emailaddress1, address1_country,
                             birthdate, medical_notes, implant_serial)
        SELECT (SELECT accountid FROM account WHERE sync_origin = %(region)s
                ORDER BY accountnumber OFFSET (g %% greatest(%(rows)s / 10, 1)) LIMIT 1),
               'First' || g, 'Last' || g || '-' || %(tag)s, 'p' || g || '@example.com', 'IE',
               date '1970-01-01' + g, 'confidential diagnosis ' || g, 'SN-' || %(tag)s || g
        FROM generate_series(1, %(rows)s) g""", {"tag": tag, "region": region, "rows": rows})
    conn.execute("""
        INSERT INTO medicalcase (contactid, diagnosis, treatment)
        SELECT contactid, 'diagnosis for ' || lastname, 'treatment'
        FROM contact WHERE sync_origin = %s""", (region,))
    conn.execute("""
        INSERT INTO salesorder (ordernumber, accountid, contactid, name, totalamount)
        SELECT %(tag)s || '-O' || row_number() OVER (), accountid, contactid, 'Order',
               100 + row_number() OVER ()
        FROM contact WHERE sync_origin = %(region)s""", {"tag": tag, "region": region})
    conn.execute("""
        INSERT INTO shipment (salesorderid, carrier, trackingnumber, destination_country)
        SELECT salesorderid, 'DHL', 'TRK-' || ordernumber, 'DE'
        FROM salesorder WHERE sync_origin = %s""", (region,))


class DaemonProcess:
    """``regionsync run`` in a child process (the same entry point production uses)."""

    def __init__(self, region: str, config: Path, log: Path) -> None:
        self.region = region
        self.log = log
        self._fh = log.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "sync.cli", "run", "--config",
                                      str(config)], stdout=self._fh, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._fh.close()
        return self.proc.returncode


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def lag_lines(text: str) -> list[tuple[str, float]]:
    out = []
    for m in re.finditer(r'^regionsync_lag_seconds\{source="([^"]+)",target="[^"]+"\} (\S+)$',
                         text, re.M):
        out.append((m.group(1), float(m.group(2))))
    return sorted(out)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.2)
    raise click.ClickException(f"timed out after {timeout:.0f}s waiting for {what}")


@contextlib.contextmanager
def daemons(configs: dict[str, Path], logdir: Path) -> Iterator[dict[str, DaemonProcess]]:
    procs: dict[str, DaemonProcess] = {}
    try:
        for region, cfg in configs.items():
            procs[region] = DaemonProcess(region, cfg, logdir / f"{region}.log")
        yield procs
    finally:
        codes = {r: p.stop() for r, p in procs.items()}
        bad = {r: c for r, c in codes.items() if c != 0}
        if bad:
            click.echo(f"daemons exited with {bad}; logs in {logdir}", err=True)
        else:
            click.echo(f"all daemons stopped cleanly on SIGTERM (exit 0): {', '.join(codes)}")


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_demo(rows: int = 200, keep_running: bool = False) -> None:
    policy_dir = shipped_policy_dir()
    echo = click.echo
    logging.getLogger("sync").setLevel(logging.WARNING)  # the demo prints its own story
    # Ctrl-C and SIGTERM become KeyboardInterrupt; every `with` below cleans up on the way
    # out. Installed explicitly: a shell may start us with SIGINT ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    with tempfile.TemporaryDirectory(prefix="regionsync-demo-") as tmp:
        tmpdir = Path(tmp)
        echo(f"starting three PostgreSQL regions with {find_pg_bin()}/pg_ctl ...")
        with clusters(REGIONS, fast=True) as cl:
            urls = {r: cl[r].create_database("dataverse") for r in REGIONS}
            for r in REGIONS:
                migrate(urls[r], r)
            conns = {r: connect(urls[r], application_name="regionsync-demo") for r in REGIONS}
            for r in REGIONS:
                seed(conns[r], r, rows)
            for r in REGIONS:
                echo(f"  {r:9} postgresql on 127.0.0.1:{cl[r].port}, seeded "
                     f"{rows} contacts with medical notes, orders and shipments")
            ports = {r: free_port() for r in REGIONS}
            configs = {}
            for r in REGIONS:
                configs[r] = tmpdir / f"{r}.yaml"
                write_config(configs[r], r, urls, ports[r], policy_dir)
            schema = introspect(conns[REGIONS[0]])
            policy = load_policy(policy_dir, schema)
            echo(f"policy {policy.sha} from {policy_dir}: tables "
                 f"{', '.join(sorted(policy.rules))} sync; medical columns and medicalcase "
                 "stay home")
            for r in REGIONS:
                made = apply_egress(conns[r], policy, schema, [p for p in REGIONS if p != r])
                with conns[r].transaction():
                    for stmt in local_role_statements(schema, daemon=DAEMON_ROLE, app=None):
                        conns[r].execute(stmt)
                echo(f"  {r:9} enforces it for its peers: roles {', '.join(made)} "
                     "(column grants, row security, journal views)")
            echo(f"  every daemon runs as {DAEMON_ROLE}: no superuser, not the tables' owner; "
                 "it reads its peers as the roles they made for it")
            with daemons(configs, tmpdir) as procs:
                def alive() -> None:
                    for p in procs.values():
                        if p.proc.poll() is not None:
                            raise click.ClickException(
                                f"daemon {p.region} exited:\n{p.log.read_text()[-3000:]}")

                def is_converged() -> bool:
                    alive()
                    return converged(conns, schema, policy)
                took = wait_until(is_converged, 120, "the initial load")
                echo(f"\n[1] initial load: all three regions converged in {took:.1f}s")
                edits(conns, echo)
                took = wait_until(is_converged, 60, "the edits to converge")
                echo(f"[3] edits converged everywhere in {took:.1f}s\n")
                report(conns, ports, echo)
                if keep_running:
                    echo("\nrunning; metrics at " + ", ".join(
                        f"http://127.0.0.1:{p}/metrics" for p in ports.values())
                         + " — Ctrl-C to stop")
                    threading.Event().wait()
            for c in conns.values():
                c.close()
        echo("clusters stopped and removed")


def edits(conns: dict[str, psycopg.Connection], echo: Callable[[str], None]) -> None:
    west, north, us = conns["eu-west"], conns["eu-north"], conns["us-east"]
    echo("[2] edits:")
    acc = scalar(us.execute("SELECT accountid FROM account WHERE sync_origin = 'eu-west' LIMIT 1"
                     ))
    us.execute("""INSERT INTO contact (accountid, firstname, lastname, medical_notes,
                  implant_serial) VALUES (%s, 'Nora', 'New-USEAST', 'allergy: penicillin',
                  'SN-USEAST-NEW')""", (acc,))
    echo("  us-east  inserts contact 'Nora New-USEAST' (with medical notes)")
    north.execute("UPDATE contact SET emailaddress1 = 'moved@example.com' "
                  "WHERE lastname = 'Last1-EUWEST'")
    echo("  eu-north updates contact Last1-EUWEST (authored in eu-west)")
    # the target table's own author deletes: shipment, then its order
    victim = scalar(west.execute("SELECT salesorderid FROM salesorder "
                                 "WHERE sync_origin = 'eu-west' ORDER BY ordernumber LIMIT 1"))
    with west.transaction():
        west.execute("DELETE FROM shipment WHERE salesorderid = %s", (victim,))
        west.execute("DELETE FROM salesorder WHERE salesorderid = %s", (victim,))
    echo("  eu-west  deletes an order and its shipment")
    # the same contact edited in two regions at (nearly) the same time
    with west.transaction(), north.transaction():
        west.execute("UPDATE contact SET telephone1 = '+353 1 000 0001' "
                     "WHERE lastname = 'Last2-EUWEST'")
        north.execute("UPDATE contact SET telephone1 = '+46 8 000 0002' "
                      "WHERE lastname = 'Last2-EUWEST'")
    echo("  eu-west and eu-north both edit contact Last2-EUWEST's phone at the same moment")
    # two fields of one contact, one in each region, at the same moment: both are kept
    with west.transaction(), north.transaction():
        west.execute("UPDATE contact SET firstname = 'Merged' WHERE lastname = 'Last3-EUWEST'")
        north.execute("UPDATE contact SET address1_country = 'SE' "
                      "WHERE lastname = 'Last3-EUWEST'")
    echo("  eu-west edits contact Last3-EUWEST's first name while eu-north edits its country")
    # the same business key (account number, unique) created in two regions at once
    with west.transaction(), north.transaction():
        west.execute("INSERT INTO account (accountnumber, name, address1_country) "
                     "VALUES ('ACME-NEW', 'Acme (entered in eu-west)', 'IE')")
        north.execute("INSERT INTO account (accountnumber, name, address1_country) "
                      "VALUES ('ACME-NEW', 'Acme (entered in eu-north)', 'SE')")
    echo("  eu-west and eu-north both create account ACME-NEW (a unique account number) at "
         "the same moment")


def report(conns: dict[str, psycopg.Connection], ports: dict[str, int],
           echo: Callable[[str], None]) -> None:
    echo(f"{'region':9} {'accounts':>8} {'contacts':>8} {'orders':>6} {'shipments':>9}"
         f"  {'arrived from peers':>18}  {'foreign medical':>15}  {'foreign personal':>16}"
         f"  {'medicalcase':>11}  {'conflicts':>9}")
    for r, c in conns.items():
        counts = [scalar(c.execute(f"SELECT count(*) FROM {t}"))
                  for t in ("account", "contact", "salesorder", "shipment")]
        arrived = sum(scalar(c.execute(f"SELECT count(*) FROM {t} WHERE sync_origin <> %s",
                                (r,)))
                      for t in ("account", "contact", "salesorder", "shipment"))
        # a contact's home region is the tag in its last name (the demo's seed)
        foreign_medical = scalar(c.execute(
            "SELECT count(*) FROM contact WHERE lastname NOT LIKE %s AND "
            "(medical_notes IS NOT NULL OR implant_serial IS NOT NULL)",
            ("%-" + r.replace("-", "").upper(),)))
        # e-mail, phone, birth date of people from other regions: EU regions only
        foreign_personal = scalar(c.execute(
            "SELECT count(*) FROM contact WHERE lastname NOT LIKE %s AND (emailaddress1 IS "
            "NOT NULL OR telephone1 IS NOT NULL OR birthdate IS NOT NULL)",
            ("%-" + r.replace("-", "").upper(),)))
        cases = one_row(c.execute("SELECT count(*), count(*) FILTER (WHERE sync_origin <> %s) "
                                  "FROM medicalcase", (r,)))
        conflicts = state.count_conflicts(c)
        echo(f"{r:9} {counts[0]:>8} {counts[1]:>8} {counts[2]:>6} {counts[3]:>9}"
             f"  {arrived:>18}  {foreign_medical:>15}  {foreign_personal:>16}"
             f"  {cases[0]:>5} ({cases[1]} foreign)"
             f"  {conflicts:>9}")
    phone = {r: c.execute("SELECT telephone1, sync_origin FROM contact "
                          "WHERE lastname = 'Last2-EUWEST'").fetchone() for r, c in conns.items()}
    echo("\nconcurrent edit resolved identically in every EU region (last writer wins; "
         f"us-east holds no phone numbers of EU contacts): {phone}")
    merged = {r: c.execute("SELECT firstname, address1_country FROM contact "
                           "WHERE lastname = 'Last3-EUWEST'").fetchone() for r, c in conns.items()}
    echo("concurrent edits of two fields merged column by column, both kept everywhere: "
         f"{merged}")
    acme = {r: sorted((n.split(" ~dup-")[0] + (" ~dup-…" if "~dup-" in n else ""), name)
                      for n, name in c.execute(
                          "SELECT accountnumber, name FROM account "
                          "WHERE accountnumber LIKE 'ACME-NEW%'").fetchall())
            for r, c in conns.items()}
    echo("one account number created in two regions: the first copy keeps it, the later one "
         f"is kept under a marked key, the same everywhere: {acme}")
    for r, c in conns.items():
        row = state.first_conflict(c)
        if row:
            echo(f"  {r}: conflict_log keeps the losing version from {row[0]} "
                 f"(winner {row[1]})")
    echo("\nlag (regionsync_lag_seconds, from each daemon's /metrics):")
    for r, port in ports.items():
        lags = ", ".join(f"{src}→{r} {v:.3f}s" for src, v in lag_lines(scrape(port)))
        echo(f"  {r:9} {lags}")
