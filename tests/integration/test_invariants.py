"""Invariants 2-5 (docs/design.md, "Invariants and their tests") against real PostgreSQL."""

from __future__ import annotations

import random
import uuid

import pytest

from sync.errors import TokenRegression
from sync.records import Page
from tests.fix_pg import Mesh
from tests.integration.helpers import account, contact

MESH = ["eu-west", "eu-north", "us-east"]


def test_out_of_order_commit_is_still_delivered(mesh: Mesh) -> None:
    """T1 takes an earlier version than T2 but commits after a poll saw T2 (invariant 2)."""
    t1 = mesh.new_conn("eu-west")
    t2 = mesh.new_conn("eu-west")
    t1.execute("BEGIN")
    first = contact(t1, "Early")                  # version N, not yet committed
    second = contact(t2, "Late")                  # version N+1, committed
    v1 = t1.execute("SELECT versionnumber FROM contact WHERE contactid = %s",
                    (first,)).fetchone()[0]
    v2 = mesh.one("eu-west", "SELECT versionnumber FROM contact WHERE contactid = %s", (second,))
    assert v1 < v2  # the trap: a bare `versionnumber > last` would skip `first` forever
    mesh.pull("eu-north", "eu-west")
    mesh.pull("eu-north", "eu-west")
    arrived = {r[0] for r in mesh.conn("eu-north").execute("SELECT contactid FROM contact")}
    assert arrived == {second}
    t1.execute("COMMIT")
    mesh.pull("eu-north", "eu-west")
    arrived = {r[0] for r in mesh.conn("eu-north").execute("SELECT contactid FROM contact")}
    assert arrived == {first, second}


def test_no_echo_once_the_mesh_is_idle(mesh: Mesh) -> None:
    west, north = mesh.conn("eu-west"), mesh.conn("eu-north")
    aid = account(west, "E-1")
    contact(west, "Echo", accountid=aid)
    contact(north, "Echo2", accountid=None)
    mesh.sync()
    journal = {r: mesh.one(r, "SELECT count(*) FROM sync.change_log") for r in MESH}
    for target in MESH:
        for source in MESH:
            if source != target:
                for batch in mesh.pull(target, source):
                    assert batch.rows == 0, (target, source, batch)
    assert {r: mesh.one(r, "SELECT count(*) FROM sync.change_log") for r in MESH} == journal
    # each applied change was journaled once at the receiver, with its true origin
    assert mesh.one("us-east", "SELECT count(*) FROM sync.change_log WHERE origin = 'us-east'") == 0


def test_concurrent_edits_converge_and_the_loser_is_logged(mesh: Mesh) -> None:
    west, north = mesh.new_conn("eu-west"), mesh.new_conn("eu-north")
    cid = contact(west, "Both")
    mesh.sync()
    west.execute("BEGIN")
    north.execute("BEGIN")
    west.execute("UPDATE contact SET telephone1 = 'west' WHERE contactid = %s", (cid,))
    north.execute("UPDATE contact SET telephone1 = 'north', firstname = 'N' WHERE contactid = %s",
                  (cid,))
    west.execute("COMMIT")
    north.execute("COMMIT")                 # north wrote later: north wins everywhere
    mesh.sync()
    rows = {r: mesh.rows(r, "contact") for r in MESH}
    assert rows["eu-west"] == rows["eu-north"] == rows["us-east"]
    assert mesh.one("us-east", "SELECT telephone1 FROM contact") == "north"
    losers = [row for r in MESH for row in mesh.conn(r).execute(
        "SELECT loser_origin, winner_origin, loser_row->>'telephone1', diff "
        "FROM sync.conflict_log WHERE pk = %s", (cid,)).fetchall()]
    assert ("eu-west", "eu-north", "west") in [row[:3] for row in losers]
    assert "telephone1" in str(losers[0][3])        # field-level difference recorded


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_interleavings_converge(mesh: Mesh, seed: int) -> None:
    """Invariant 4: whatever the interleaving of edits and partial syncs, all regions end
    identical in every synced column."""
    rnd = random.Random(seed)
    ids = [uuid.uuid4() for _ in range(6)]
    for i, cid in enumerate(ids):
        contact(mesh.conn(MESH[i % 3]), f"R{i}", contactid=cid)
    for step in range(40):
        region = rnd.choice(MESH)
        cid = rnd.choice(ids)
        conn = mesh.conn(region)
        action = rnd.random()
        if action < 0.6:
            conn.execute("UPDATE contact SET firstname = %s WHERE contactid = %s",
                         (f"{region}-{step}", cid))
        elif action < 0.75:
            conn.execute("DELETE FROM contact WHERE contactid = %s", (cid,))
        elif action < 0.85:
            exists = conn.execute("SELECT 1 FROM contact WHERE contactid = %s", (cid,)).fetchone()
            if not exists:
                contact(conn, f"Again{step}", contactid=cid)
        else:
            target, source = rnd.sample(MESH, 2)
            mesh.pull(target, source)
    mesh.sync()
    rows = {r: mesh.rows(r, "contact") for r in MESH}
    assert rows["eu-west"] == rows["eu-north"] == rows["us-east"]


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("step", ["staged", "token"])
def test_failure_mid_page_moves_neither_data_nor_token(mesh: Mesh, step: str) -> None:
    """Invariant 3 (in-process): a page that fails between statements leaves nothing."""
    west = mesh.conn("eu-west")
    mesh.sync()  # tokens exist; the next batch is a delta
    aid = account(west, "C-1")
    contact(west, "Crash", accountid=aid)
    link = mesh.link("eu-north", "eu-west")
    token_before = mesh.one("eu-north", "SELECT token FROM sync.peer_state WHERE peer='eu-west'")

    def fail(name: str) -> None:
        if name == step:
            raise Boom(name)
    link.conns.open().applier.fault_hook = fail
    with pytest.raises(Boom):
        link.run_once()
    assert mesh.one("eu-north", "SELECT count(*) FROM account") == 0
    assert mesh.one("eu-north", "SELECT count(*) FROM contact") == 0
    assert mesh.one("eu-north", "SELECT token FROM sync.peer_state WHERE peer='eu-west'") \
        == token_before
    link.conns.open().applier.fault_hook = None
    batch = link.run_once()
    assert batch.rows == 2
    assert mesh.rows("eu-north", "contact") == mesh.rows("eu-west", "contact")
    # applied exactly once: one journal entry per row at the receiver
    assert mesh.one("eu-north", "SELECT count(*) FROM sync.change_log") == 2
    assert link.run_once().rows == 0


def test_a_batch_of_several_pages_commits_its_token_after_every_page(mesh: Mesh) -> None:
    """One page: data and token in one transaction. Several pages (applied in parallel):
    the token commits alone after all of them; if that fails, the rows stay, the token
    does not move, and the replay changes nothing."""
    west = mesh.conn("eu-west")
    contact(west, "Single")
    link = mesh.link("eu-north", "eu-west", page_size=3)
    link.run_once()
    log = "SELECT rows, token IS NOT NULL FROM sync.integration_log ORDER BY id"
    assert mesh.conn("eu-north").execute(log).fetchall() == [(1, True)]
    for i in range(7):
        contact(west, f"Multi{i}")
    token_before = mesh.one("eu-north", "SELECT token FROM sync.peer_state")

    def fail(name: str) -> None:
        if name == "token":
            raise Boom(name)
    main = link.conns.open().applier
    original = main.apply_page

    def token_fails(page, **kw):   # only the token's own transaction fails
        main.fault_hook = fail if kw.get("token") else None
        return original(page, **kw)
    main.apply_page = token_fails  # type: ignore[method-assign]
    with pytest.raises(Boom):
        link.run_once()
    assert mesh.one("eu-north", "SELECT count(*) FROM contact") == 8   # pages committed
    assert mesh.one("eu-north", "SELECT token FROM sync.peer_state") == token_before
    main.apply_page = original  # type: ignore[method-assign]
    main.fault_hook = None
    journal = mesh.one("eu-north", "SELECT count(*) FROM sync.change_log")
    replay = link.run_once()
    assert replay.rows == 7 and sum(replay.applied.values()) == 0
    assert mesh.one("eu-north", "SELECT count(*) FROM sync.change_log") == journal
    rows = mesh.conn("eu-north").execute(log).fetchall()
    assert rows[-1] == (0, True) and sum(r[0] for r in rows[1:-1]) == 7 + 7
    assert mesh.rows("eu-north", "contact") == mesh.rows("eu-west", "contact")


def test_replayed_batch_has_no_effect(mesh: Mesh) -> None:
    """A batch read again from an old token (crash after some pages) changes nothing."""
    west = mesh.conn("eu-west")
    for i in range(7):
        contact(west, f"P{i}")
    mesh.pull("eu-north", "eu-west")
    west.execute("UPDATE contact SET firstname = 'v2'")
    mesh.links.pop(("eu-north", "eu-west")).close()
    link = mesh.link("eu-north", "eu-west", page_size=3)
    old = mesh.one("eu-north", "SELECT token FROM sync.peer_state")
    link.run_once()
    journal = mesh.one("eu-north", "SELECT count(*) FROM sync.change_log")
    # roll the token back, as if the process died before the batch's last page
    mesh.conn("eu-north").execute("UPDATE sync.peer_state SET token = %s", (old,))
    replay = link.run_once()
    assert replay.rows == 7
    assert sum(replay.applied.values()) == 0
    assert mesh.one("eu-north", "SELECT count(*) FROM sync.change_log") == journal


def test_late_joining_region_gets_snapshot_then_deltas(mesh: Mesh) -> None:
    west, north = mesh.conn("eu-west"), mesh.conn("eu-north")
    aid = account(west, "J-1")
    for i in range(20):
        contact(west, f"W{i}", accountid=aid)
    contact(north, "N0")
    mesh.sync()
    # a transaction open across the joiner's initial load must arrive afterwards
    open_txn = mesh.new_conn("eu-west")
    open_txn.execute("BEGIN")
    pending = contact(open_txn, "DuringLoad")
    new = ["eu-west", "eu-north", "us-east", "ap-south"]
    for source in ["eu-west", "eu-north", "us-east"]:
        first = mesh.pull("ap-south", source)[0]
        assert first.initial
    assert mesh.one("ap-south", "SELECT count(*) FROM contact") == 21
    open_txn.execute("COMMIT")
    contact(west, "After")
    mesh.sync(new)
    rows = {r: mesh.rows(r, "contact") for r in new}
    assert rows["ap-south"] == rows["eu-west"] == rows["us-east"]
    assert mesh.one("ap-south", "SELECT count(*) FROM contact WHERE contactid = %s",
                    (pending,)) == 1
    assert mesh.one("ap-south", "SELECT count(*) FROM sync.change_log") == \
        mesh.one("ap-south", "SELECT count(*) FROM contact") + 1  # + the account, once each


def test_token_never_moves_backwards(mesh: Mesh) -> None:
    contact(mesh.conn("eu-west"), "T")
    mesh.sync()
    link = mesh.link("eu-north", "eu-west")
    applier = link.conns.open().applier
    newer = mesh.one("eu-north", "SELECT token FROM sync.peer_state")
    with pytest.raises(TokenRegression, match="would move backwards"):
        applier.apply_page(Page(()), token="1:1:", policy_sha=mesh.policy.sha)
    assert mesh.one("eu-north", "SELECT token FROM sync.peer_state") == newer


def test_a_region_that_forwards_nothing_journals_no_applied_row(mesh: Mesh) -> None:
    """forward: false (mesh member or spoke) skips the journal for applied rows only."""
    link = mesh.link("eu-north", "eu-west", forward=False)
    contact(mesh.conn("eu-west"), "NotForwarded")
    link.run_once()
    assert mesh.one("eu-north", "SELECT count(*) FROM contact") == 1
    assert mesh.one("eu-north", "SELECT count(*) FROM sync.change_log") == 0
    contact(mesh.conn("eu-north"), "LocalStillCaptured")
    assert mesh.one("eu-north", "SELECT count(*) FROM sync.change_log "
                                "WHERE origin = 'eu-north'") == 1
    mesh.pull("us-east", "eu-north")          # a mesh peer still gets eu-north's own rows
    assert mesh.one("us-east", "SELECT count(*) FROM contact") == 1


def test_initial_load_into_an_empty_table_falls_back_when_a_key_clashes(mesh: Mesh) -> None:
    """The direct COPY of an initial load meets a row inserted locally meanwhile: it
    falls back to merging (last writer wins), nothing fails."""
    west = mesh.conn("eu-west")
    shared = contact(west, "FromWest")
    other = contact(west, "Other")
    link = mesh.link("eu-north", "eu-west")
    applier = link.conns.open().applier
    raced = []

    def race(step: str) -> None:
        if step == "segment" and not raced:
            raced.append(True)
            contact(mesh.new_conn("eu-north"), "LocalNewer", contactid=shared)
    applier.fault_hook = race
    batch = link.run_once()
    assert batch.initial and raced
    north = mesh.conn("eu-north")
    assert north.execute("SELECT lastname FROM contact WHERE contactid = %s",
                         (shared,)).fetchone()[0] == "LocalNewer"     # newer local wins
    assert north.execute("SELECT count(*) FROM contact WHERE contactid = %s",
                         (other,)).fetchone()[0] == 1
