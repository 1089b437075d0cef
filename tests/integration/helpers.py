"""Small writers of Dataverse-like rows for the integration tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import psycopg
import psycopg.conninfo


def account(conn: psycopg.Connection, number: str, name: str = "Acme", **kw) -> uuid.UUID:
    aid = kw.pop("accountid", uuid.uuid4())
    conn.execute("INSERT INTO account (accountid, accountnumber, name, address1_country) "
                 "VALUES (%s, %s, %s, %s)", (aid, number, name, kw.get("country", "IE")))
    return aid


def contact(conn: psycopg.Connection, lastname: str, *, accountid: uuid.UUID | None = None,
            medical: str | None = "confidential", implant: str | None = "SN-1",
            country: str = "IE", contactid: uuid.UUID | None = None) -> uuid.UUID:
    cid = contactid or uuid.uuid4()
    conn.execute("""INSERT INTO contact (contactid, accountid, firstname, lastname,
                    emailaddress1, address1_country, medical_notes, implant_serial)
                    VALUES (%s, %s, 'Jo', %s, %s, %s, %s, %s)""",
                 (cid, accountid, lastname, f"{lastname.lower()}@example.com", country, medical,
                  implant))
    return cid


@contextlib.contextmanager
def application_role(url: str, owner: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """A connection as a fresh application role: a login with DML on the business tables
    and nothing of schema sync, as `regionsync roles --app-role` makes it."""
    role = f"app_{uuid.uuid4().hex[:8]}"
    owner.execute(f'CREATE ROLE "{role}" LOGIN')
    owner.execute(f'GRANT USAGE ON SCHEMA public TO "{role}"')
    owner.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public '
                  f'TO "{role}"')
    conn = psycopg.connect(psycopg.conninfo.make_conninfo(url, user=role), autocommit=True)
    try:
        yield conn
    finally:
        conn.close()
        owner.execute(f'DROP OWNED BY "{role}"')
        owner.execute(f'DROP ROLE "{role}"')


def peer_scans(conn: psycopg.Connection, reader: psycopg.Connection,
               relid: str) -> tuple[int, int]:
    """(sequential scans, index scans) of ``relid`` at the peer so far, once the reader's
    backend has flushed its statistics (PostgreSQL 15 keeps them in the backend until it
    goes idle)."""
    reader.execute("SELECT pg_stat_force_next_flush()")
    reader.execute("SELECT 1")
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return conn.execute("SELECT coalesce(seq_scan, 0), coalesce(idx_scan, 0) "
                        "FROM pg_stat_all_tables WHERE relid = %s::regclass",
                        (relid,)).fetchone()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `regionsync ARGS` as a user would (a separate process)."""
    return subprocess.run([sys.executable, "-m", "sync.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=120)




def hub_rounds(mesh: Any, hub: str, spokes: list[str]) -> int:
    """Three rounds of hub-and-spoke pulls (hub from each spoke, each spoke from the hub);
    returns the rows moved."""
    moved = 0
    for _ in range(3):
        for s in spokes:
            moved += sum(b.rows for b in mesh.pull(hub, s))
        for s in spokes:
            moved += sum(b.rows for b in mesh.pull(s, hub))
    return moved


ROOT = Path(__file__).resolve().parents[2]
# released trees, by tag and commit: a clone without tags (CI's) still has the commit
RELEASES = {"v0.1.0": "71fac6b200ad4626f329aee099e55e69a4b0a165",
            "v0.2.0": "c9e697f82267850dc39968775e343f6a2d0fa208"}


def release_tree(tag: str, dest: Path) -> Path:
    """A released tree (``sync``, ``alembic``, ``policies``) from this repository's
    history, so an upgrade test runs the release's own code on a real database; ``tag``
    may also be a commit of main (a schema between releases)."""
    commit = RELEASES.get(tag, tag)
    for ref in (f"{tag}^{{commit}}", commit):
        found = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "-q", ref],
                               capture_output=True, text=True)
        if found.returncode == 0:
            break
    else:   # a shallow clone: fetch the release, then try once more
        subprocess.run(["git", "-C", str(ROOT), "fetch", "-q", "origin", commit], check=False)
        found = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", commit],
                               capture_output=True, text=True)
        assert found.returncode == 0, f"release {tag} ({commit}) is not in this clone's history"
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", found.stdout.strip(),
                              "sync", "alembic", "policies"], capture_output=True, check=True)
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return dest
