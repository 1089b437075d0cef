"""Alternate keys (unique business keys besides the primary key) created in two or three
regions at once: the copy that claimed the key first keeps it, the later copy keeps every
value and child under a marked key, the same in every region, and nothing waits in the
dead-letter table.

The links are pulled by hand: each copy is created before its region has heard of the
other, so the collisions are real.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from prometheus_client import generate_latest
from psycopg import sql

from sync.apply.altkeys import MARK, AlternateKeys
from sync.db import dead_letters
from sync.errors import TransientError, from_db
from sync.runtime.metrics import Metrics
from tests.fix_pg import Mesh
from tests.integration.helpers import account, cli, contact, hub_rounds
from tests.integration.test_ops import config_file

MESH = ["eu-west", "eu-north", "us-east"]


def _order(conn, number: str, aid: uuid.UUID, name: str = "order") -> uuid.UUID:
    oid = uuid.uuid4()
    conn.execute("INSERT INTO salesorder (salesorderid, ordernumber, accountid, name, "
                 "totalamount) VALUES (%s, %s, %s, %s, 10)", (oid, number, aid, name))
    return oid


def _accounts(mesh: Mesh, region: str) -> dict[uuid.UUID, tuple]:
    return {r[0]: r[1:] for r in mesh.conn(region).execute(
        "SELECT accountid, accountnumber, name, telephone1, address1_city, revenue "
        "FROM account ORDER BY accountid")}


def _same_everywhere(mesh: Mesh) -> None:
    for table in ("account", "contact", "salesorder"):
        west = mesh.rows("eu-west", table)
        for region in MESH[1:]:
            assert mesh.rows(region, table) == west, (table, region)
    for region in MESH:
        assert mesh.one(region, "SELECT count(*) FROM sync.dead_letter") == 0, region


def test_two_regions_create_the_same_account_number(mesh: Mesh) -> None:
    """eu-west creates ACME-1 first, eu-north a moment later, each with an order: after
    sync every region holds both accounts and both orders; eu-west's copy keeps the key."""
    west, north = mesh.conn("eu-west"), mesh.conn("eu-north")
    first = account(west, "ACME-1", "West's")
    west_order = _order(west, "SO-W1", first)
    second = account(north, "ACME-1", "North's")
    north_order = _order(north, "SO-N1", second)
    mesh.sync()
    _same_everywhere(mesh)
    for region in MESH:
        got = _accounts(mesh, region)
        assert got[first][:2] == ("ACME-1", "West's"), region
        assert got[second][:2] == (f"ACME-1{MARK}{second}", "North's"), region
        orders = dict(mesh.conn(region).execute(
            "SELECT salesorderid, accountid FROM salesorder").fetchall())
        assert orders == {west_order: first, north_order: second}, region
    # the losing copy is on record, whole, with both claims, where the two met (us-east
    # heard of eu-north's copy from eu-west, already marked)
    for region in ("eu-west", "eu-north"):
        row = mesh.conn(region).execute(
            "SELECT pk, reason, loser_row, columns FROM sync.conflict_log "
            "WHERE reason LIKE 'alternate key%'").fetchone()
        assert row is not None, region
        pk, reason, loser, columns = row
        assert pk == second and "account_accountnumber_key" in reason
        assert loser["accountnumber"] == "ACME-1" and loser["name"] == "North's"
        assert columns["accountnumber"]["won"].endswith(" eu-west")
        assert columns["accountnumber"]["lost"].endswith(" eu-north")
    # the mark is an edit like any: renaming the copy later wins everywhere
    north.execute("UPDATE account SET accountnumber = 'ACME-1-N' WHERE accountid = %s",
                  (second,))
    mesh.sync()
    _same_everywhere(mesh)
    assert {r: _accounts(mesh, r)[second][0] for r in MESH} == dict.fromkeys(MESH, "ACME-1-N")


@pytest.mark.parametrize("order", ["later copy first", "first copy first"])
def test_three_regions_create_one_key_and_every_arrival_order_agrees(mesh: Mesh,
                                                                     order: str) -> None:
    """All three regions create ACME-3 with different values in several columns. Whatever
    order the copies reach a region in, the earliest keeps the key and each later one
    keeps all its own values under its mark."""
    made: list[uuid.UUID] = []
    for region, phone, city in (("eu-west", "111", "Dublin"), ("eu-north", "222", "Oslo"),
                                ("us-east", "333", "Boston")):
        c = mesh.conn(region)
        aid = account(c, "ACME-3", f"{region}'s")
        c.execute("UPDATE account SET telephone1 = %s, address1_city = %s, revenue = %s "
                  "WHERE accountid = %s", (phone, city, len(made) + 1, aid))
        contact(c, f"Staff-{region}", accountid=aid)
        made.append(aid)
    if order == "later copy first":
        mesh.pull("eu-west", "us-east")
        mesh.pull("eu-west", "eu-north")
        mesh.pull("us-east", "eu-north")
    mesh.sync()
    _same_everywhere(mesh)
    got = _accounts(mesh, "us-east")
    assert got[made[0]] == ("ACME-3", "eu-west's", "111", "Dublin", 1)
    assert got[made[1]] == (f"ACME-3{MARK}{made[1]}", "eu-north's", "222", "Oslo", 2)
    assert got[made[2]] == (f"ACME-3{MARK}{made[2]}", "us-east's", "333", "Boston", 3)
    # children of every copy are still theirs
    for region in MESH:
        assert mesh.one(region, "SELECT count(DISTINCT accountid) FROM contact") == 3
    # the conflict log has each loser's differing columns (no values leave the region)
    diff = mesh.one("eu-west", "SELECT diff FROM sync.conflict_log WHERE pk = %s "
                    "AND reason IS NOT NULL", (made[2],))
    assert {"telephone1", "address1_city", "revenue", "name"} <= set(diff["alternate_key"])


def test_order_numbers_collide_and_resolve_like_account_numbers(mesh: Mesh) -> None:
    west, north = mesh.conn("eu-west"), mesh.conn("eu-north")
    aid = account(west, "SHARED")
    mesh.sync()
    first = _order(west, "SO-42", aid, "west")
    second = _order(north, "SO-42", aid, "north")
    mesh.sync()
    _same_everywhere(mesh)
    for region in MESH:
        got = dict(mesh.conn(region).execute(
            "SELECT salesorderid, ordernumber FROM salesorder").fetchall())
        assert got == {first: "SO-42", second: f"SO-42{MARK}{second}"}, region


def test_a_key_given_up_meanwhile_still_converges(mesh: Mesh) -> None:
    """eu-west renames its ACME-5 to ACME-5-OLD while us-east, which has not heard of it,
    creates a new ACME-5. eu-north hears of the new one before the rename and sees a
    collision; eu-west, renamed already, does not: the mark travels as an edit, so every
    region still agrees."""
    west = mesh.conn("eu-west")
    old = account(west, "ACME-5", "old")
    mesh.pull("eu-north", "eu-west")
    west.execute("UPDATE account SET accountnumber = 'ACME-5-OLD' WHERE accountid = %s", (old,))
    new = account(mesh.conn("us-east"), "ACME-5", "new")
    mesh.pull("eu-north", "us-east")      # a collision with the old ACME-5, not renamed here
    mesh.pull("eu-west", "us-east")       # renamed already: no collision
    mesh.sync()
    _same_everywhere(mesh)
    numbers = {r: _accounts(mesh, r)[new][0] for r in MESH}
    assert numbers == dict.fromkeys(MESH, f"ACME-5{MARK}{new}"), numbers
    assert {r: _accounts(mesh, r)[old][0] for r in MESH} == dict.fromkeys(MESH, "ACME-5-OLD")


def test_a_permanently_failing_row_is_marked_stuck_and_says_so(mesh: Mesh,
                                                               tmp_path: Path) -> None:
    """us-east refuses a row for good (a CHECK its peers do not have): after STUCK_AFTER
    attempts that failed alike it is stuck, counted apart, and `dlq list` says what to do."""
    east = mesh.conn("us-east")
    east.execute("ALTER TABLE account ADD CONSTRAINT no_test_accounts "
                 "CHECK (name <> 'TEST') NOT VALID")
    account(mesh.conn("eu-west"), "T-1", "TEST")
    metrics = Metrics()
    link = mesh.link("us-east", "eu-west", metrics=metrics)
    mesh.pull("us-east", "eu-west")
    ident = mesh.one("us-east", "SELECT id FROM sync.dead_letter")
    for attempt in range(2, dead_letters.STUCK_AFTER + 1):
        assert mesh.one("us-east", "SELECT stuck_at IS NULL FROM sync.dead_letter") is True
        assert link.retry_dead_letters(ids=[ident]) == (1, 0), attempt
    assert mesh.one("us-east", "SELECT attempts FROM sync.dead_letter") == dead_letters.STUCK_AFTER
    assert mesh.one("us-east", "SELECT stuck_at IS NOT NULL FROM sync.dead_letter") is True
    assert dead_letters.count_dead_letters(east, "eu-west") == (1, 1)
    scraped = generate_latest(metrics.registry).decode()
    assert ('regionsync_dead_letters_stuck{source="eu-west",target="us-east"} 1.0'
            in scraped)
    listed = cli("dlq", "list", "--config", str(config_file(tmp_path, mesh, "us-east")))
    assert listed.returncode == 0, listed.stderr
    assert "STUCK" in listed.stdout and "stuck (23514): a CHECK constraint" in listed.stdout
    # fixed at the cause: the next retry heals it and nothing is stuck any more
    east.execute("ALTER TABLE account DROP CONSTRAINT no_test_accounts")
    assert link.retry_dead_letters(ids=[ident]) == (1, 1)
    assert dead_letters.count_dead_letters(east, "eu-west") == (0, 0)


def test_a_different_failure_starts_the_count_again(mesh: Mesh) -> None:
    east = mesh.conn("us-east")
    east.execute("ALTER TABLE account ADD CONSTRAINT c1 CHECK (name <> 'TEST') NOT VALID")
    account(mesh.conn("eu-west"), "T-2", "TEST")
    mesh.pull("us-east", "eu-west")
    ident = mesh.one("us-east", "SELECT id FROM sync.dead_letter")
    link = mesh.link("us-east", "eu-west")
    for _ in range(3):
        link.retry_dead_letters(ids=[ident])
    east.execute("ALTER TABLE account DROP CONSTRAINT c1, "
                 "ADD CONSTRAINT c2 CHECK (name <> 'TEST') NOT VALID")
    link.retry_dead_letters(ids=[ident])
    assert mesh.conn("us-east").execute(
        "SELECT attempts, same_failures, stuck_at FROM sync.dead_letter").fetchone() == (5, 1, None)


def test_policy_explain_shows_the_alternate_keys(mesh: Mesh, tmp_path: Path) -> None:
    out = cli("policy", "explain", "account", "--config",
              str(config_file(tmp_path, mesh, "eu-west")))
    assert out.returncode == 0, out.stderr
    assert "alternate keys (created in two regions at once: the first copy keeps" in out.stdout
    assert ("  [accountnumber] (unique index account_accountnumber_key; declared in the "
            "policy)") in out.stdout
    contact_out = cli("policy", "explain", "contact", "--config",
                      str(config_file(tmp_path, mesh, "eu-west")))
    assert "alternate keys" not in contact_out.stdout


def test_hub_and_spoke_resolves_a_collision_between_two_spokes(mesh: Mesh) -> None:
    """Spokes eu-north and us-east talk only through the hub eu-west and both create
    ACME-H: the hub decides, forwards the marked copy, and all three agree."""
    hub, spokes = "eu-west", ["eu-north", "us-east"]
    for s in spokes:
        mesh.link(s, hub, origins="any")
    first = account(mesh.conn("eu-north"), "ACME-H", "north")
    second = account(mesh.conn("us-east"), "ACME-H", "east")
    hub_rounds(mesh, hub, spokes)
    _same_everywhere(mesh)
    for region in MESH:
        got = _accounts(mesh, region)
        assert (got[first][0], got[second][0]) == ("ACME-H", f"ACME-H{MARK}{second}"), region
    assert hub_rounds(mesh, hub, spokes) == 0      # settled: no echo of the mark


def test_a_copy_marked_meanwhile_by_another_link_is_not_marked_twice(mesh: Mesh) -> None:
    """Two links apply to us-east at once. While one holds us-east's copy (it is marking
    it), the other finds the same copy losing to its own incoming row and waits for the
    row: when it gets it, the copy is marked already, and it must not mark the mark."""
    first = account(mesh.conn("eu-north"), "ACME-R", "north")
    second = account(mesh.conn("us-east"), "ACME-R", "east")
    other = mesh.new_conn("us-east")
    held = threading.Event()

    def other_link() -> None:
        with other.transaction():
            other.execute("UPDATE account SET accountnumber = %s WHERE accountid = %s",
                          (f"ACME-R{MARK}{second}", second))
            held.set()
            time.sleep(0.3)          # within apply's lock_timeout (500 ms)

    t = threading.Thread(target=other_link)
    t.start()
    assert held.wait(10)
    mesh.pull("us-east", "eu-north")
    t.join()
    got = _accounts(mesh, "us-east")
    assert (got[first][0], got[second][0]) == ("ACME-R", f"ACME-R{MARK}{second}")
    assert mesh.one("us-east", "SELECT count(*) FROM sync.dead_letter") == 0


def test_a_failing_local_edit_surfaces_its_own_error(mesh: Mesh) -> None:
    """The marking of a losing local row runs as a local edit inside the page transaction.
    When it fails (a deadlock with the application, say), its own error must reach the
    link — classified as contention and retried — not "current transaction is aborted"
    from restoring the apply settings afterwards, which stopped the link for five minutes
    (found by a longer stress run, seed 32)."""
    with psycopg.connect(mesh.urls["eu-west"]) as conn:
        conn.execute("SELECT set_config('regionsync.origin', 'eu-north', true)")
        keys = AlternateKeys(conn, peer="eu-north")
        with pytest.raises(psycopg.errors.DeadlockDetected) as raised:
            keys._local_edit(sql.SQL("DO $$ BEGIN RAISE EXCEPTION 'deadlock stand-in' "
                                     "USING ERRCODE = '40P01'; END $$"), ())
        assert isinstance(from_db(raised.value, peer="eu-north"), TransientError)
        conn.rollback()
