"""`regionsync forget`: a person erased in every region, with a receipt from each.

Afterwards no value of the record remains in any table of any region — the business
tables, the conflict log, dead letters, the journal — only what keeps it from coming
back (its key in tombstones and the delete's journal entries) and the receipts.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

from tests.fix_daemons import write_config
from tests.fix_pg import Mesh
from tests.integration.helpers import account, cli, contact

REGIONS = ("eu-west", "eu-north", "us-east")


def _holding(conn: psycopg.Connection, needles: list[str]) -> list[str]:
    """Every table (business and sync schemas) with a row whose text shows a needle."""
    found = []
    tables = conn.execute("SELECT schemaname, tablename FROM pg_tables "
                          "WHERE schemaname IN ('public', 'sync')").fetchall()
    for schema, table in tables:
        q = sql.SQL("SELECT count(*) FROM {}.{} t WHERE t::text LIKE ANY(%s)").format(
            sql.Identifier(schema), sql.Identifier(table))
        if conn.execute(q, ([f"%{n}%" for n in needles],)).fetchone()[0]:
            found.append(f"{schema}.{table}")
    return found


def test_forget_erases_a_person_everywhere_and_each_region_signs_for_it(
        mesh: Mesh, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    name, secret, phone = f"Erasme{tag}", f"DIAG-{tag}", f"+353-{tag}"
    west = mesh.conn("eu-west")
    acc = account(west, f"A-{tag}")
    cid = contact(west, name, accountid=acc, medical=secret)
    west.execute("UPDATE contact SET telephone1 = %s WHERE contactid = %s", (phone, cid))
    west.execute("INSERT INTO medicalcase (contactid, diagnosis) VALUES (%s, %s)", (cid, secret))
    order = west.execute("INSERT INTO salesorder (ordernumber, accountid, contactid, name) "
                         "VALUES (%s, %s, %s, 'kept') RETURNING salesorderid",
                         (f"SO-{tag}", acc, cid)).fetchone()[0]
    mesh.sync()
    # the person's values spread: copies, losing versions in conflict logs, journals
    with mesh.conn("eu-north").transaction(), mesh.conn("us-east").transaction():
        mesh.conn("eu-north").execute("UPDATE contact SET firstname = %s WHERE contactid = %s",
                                      (f"{name}-n", cid))
        mesh.conn("us-east").execute("UPDATE contact SET firstname = %s WHERE contactid = %s",
                                     (f"{name}-u", cid))
    mesh.sync()
    mesh.conn("eu-north").execute(
        "INSERT INTO sync.dead_letter (peer, tablename, pk, op, row_data, error) VALUES "
        "('eu-west', 'contact', %s, 'upsert', %s, 'stand-in for a parked row')",
        (cid, json.dumps({"lastname": name})))
    needles = [name, secret, phone]
    held = {r: _holding(mesh.conn(r), needles) for r in REGIONS}
    assert all("public.contact" in h for h in held.values()), held
    assert any("sync.conflict_log" in h for h in held.values()), held

    cfg = write_config(tmp_path / "west.yaml", "eu-west", mesh.urls["eu-west"],
                       {r: mesh.urls[r] for r in REGIONS if r != "eu-west"})
    done = cli("forget", "contact", str(cid), "--config", str(cfg))
    assert done.returncode == 1, done.stdout + done.stderr        # peers have not polled yet
    assert f"eu-west: contact {cid} erased at" in done.stdout
    assert "medicalcase" in done.stdout                            # its region-local child
    assert "eu-north: no receipt yet" in done.stdout
    # a region that has not heard of it yet writes the person again: too late
    mesh.conn("us-east").execute("UPDATE contact SET lastname = %s WHERE contactid = %s",
                                 (f"{name}-late", cid))
    mesh.sync()
    receipts = cli("forget", "contact", str(cid), "--config", str(cfg), "--receipts",
                   "--json")
    assert receipts.returncode == 0, receipts.stdout + receipts.stderr
    signed = json.loads(receipts.stdout)
    assert {r["region"] for r in signed["receipts"] if r["table"] == "contact"} == set(REGIONS)
    assert signed["pending"] == {}

    for region in REGIONS:
        conn = mesh.conn(region)
        assert _holding(conn, needles) == [], region
        assert conn.execute("SELECT count(*) FROM contact WHERE contactid = %s",
                            (cid,)).fetchone()[0] == 0
        # the key remains only where it keeps the record from coming back
        assert conn.execute("SELECT modifiedon = 'infinity' FROM sync.tombstone "
                            "WHERE tablename = 'contact' AND pk = %s", (cid,)).fetchone() == (
            True,), region
        for q in ("SELECT count(*) FROM sync.conflict_log WHERE pk = %s",
                  "SELECT count(*) FROM sync.dead_letter WHERE pk = %s",
                  "SELECT count(*) FROM sync.change_set WHERE %s = ANY(pks) AND op <> 'd'"):
            assert conn.execute(q, (cid,)).fetchone()[0] == 0, (region, q)
        # the order outlives its customer, unlinked
        assert conn.execute("SELECT contactid, name FROM salesorder WHERE salesorderid = %s",
                            (order,)).fetchone() == (None, "kept"), region
    assert mesh.conn("eu-west").execute("SELECT count(*) FROM medicalcase WHERE contactid = %s",
                                        (cid,)).fetchone()[0] == 0
    # nothing can bring it back: a stale version re-sent later loses, leaving no record
    assert mesh.sync() == 0


def test_forget_refuses_what_it_cannot_erase(mesh: Mesh, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "west.yaml", "eu-west", mesh.urls["eu-west"], {})
    bad = cli("forget", "contact", "not-a-uuid", "--config", str(cfg))
    assert bad.returncode == 2 and "not a key (UUID)" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr
    unknown = cli("forget", "patients", str(uuid.uuid4()), "--config", str(cfg))
    assert unknown.returncode == 2 and "unknown table 'patients'" in unknown.stderr
