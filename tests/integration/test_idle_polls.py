"""A poll that has nothing to do costs two short queries, and never hides a change.

After a batch that found nothing, a poll only compares the peer's snapshot, our token and
our policy with what that batch saw. Each test shows, through the peer's own statistics,
whether the peer's journal was read, and reads back the rows that must have arrived."""

from __future__ import annotations

import dataclasses
from typing import Any

import psycopg
import pytest

from sync.db import state
from sync.link import PeerLink
from sync.link.deadletters import CHECK_EVERY
from sync.link.quiet import TOKEN_REFRESH
from tests.fix_pg import Mesh
from tests.integration.helpers import contact, peer_scans


def _journal_reads(west: psycopg.Connection, reader: psycopg.Connection) -> int:
    """Scans of the peer's journal so far."""
    return sum(peer_scans(west, reader, "sync.change_set"))


def _idle_link(mesh: Mesh, **kw: Any) -> tuple[psycopg.Connection, PeerLink]:
    west = mesh.conn("eu-west")
    contact(west, "First")
    link = mesh.link("eu-north", "eu-west", **kw)
    assert link.run_once().initial
    assert link.run_once().rows == 0          # a batch that finds nothing
    return west, link


def _source(link: PeerLink) -> psycopg.Connection:
    return link.conns.open().source


def test_a_quiet_poll_does_not_read_the_journal_and_a_change_ends_it(mesh: Mesh) -> None:
    west, link = _idle_link(mesh)
    before = _journal_reads(west, _source(link))
    for _ in range(3):
        batch = link.run_once()
        assert batch.rows == 0 and batch.complete
    assert _journal_reads(west, _source(link)) == before

    cid = contact(west, "Second")
    assert link.run_once().rows == 1
    assert _journal_reads(west, _source(link)) > before
    north = mesh.conn("eu-north")
    assert north.execute("SELECT lastname FROM contact WHERE contactid = %s",
                         (cid,)).fetchone() == ("Second",)


def test_a_transaction_open_during_the_empty_batch_is_read_once_it_commits(
        mesh: Mesh) -> None:
    """Its transaction id sits in the empty batch's snapshot as in progress; its commit
    changes the snapshot, so the next poll reads it."""
    _, link = _idle_link(mesh)
    writer = psycopg.connect(mesh.urls["eu-west"], autocommit=True)
    try:
        with writer.transaction():
            cid = contact(writer, "Late")
            assert link.run_once().rows == 0     # in progress: not visible yet
            assert link.run_once().rows == 0
        assert link.run_once().rows == 1
    finally:
        writer.close()
    assert mesh.one("eu-north", "SELECT count(*) FROM contact WHERE contactid = %s",
                    (cid,)) == 1


def test_a_cleared_token_or_a_new_policy_ends_a_quiet_spell(mesh: Mesh) -> None:
    policy = [mesh.policy]
    west, link = _idle_link(mesh, policy=lambda: policy[0])
    north = mesh.conn("eu-north")
    # our own policy changed (its sha): the poll is a full one
    before = _journal_reads(west, _source(link))
    policy[0] = dataclasses.replace(mesh.policy, sha="changed-by-the-test")
    assert link.run_once().rows == 0
    assert _journal_reads(west, _source(link)) > before
    # an operator's resync clears the token: the next poll loads from scratch
    assert link.run_once().rows == 0
    state.forget_peer(north, "eu-west")
    batch = link.run_once()
    assert batch.initial and batch.rows >= 1


def test_dead_letters_are_looked_at_once_a_second_not_on_every_poll(
        mesh: Mesh, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon asks after every poll; the link looks at most once per CHECK_EVERY of
    its clock."""
    clock = [1000.0]
    _, link = _idle_link(mesh, clock=lambda: clock[0])
    looked: list[int] = []
    real = link.dead_letters.retry
    monkeypatch.setattr(link.dead_letters, "retry", lambda: looked.append(1) or real())
    for _ in range(5):
        assert link.retry_dead_letters_due() == (0, 0)
    assert len(looked) == 1
    clock[0] += CHECK_EVERY - 0.01
    link.retry_dead_letters_due()
    assert len(looked) == 1
    clock[0] += 0.01
    link.retry_dead_letters_due()
    assert len(looked) == 2


def test_a_quiet_link_still_moves_its_token_once_the_refresh_is_due(mesh: Mesh) -> None:
    """A transaction at the peer that journals nothing for us (here one that only takes
    an id) moves the peer's snapshot but not our token until the refresh is due; a quiet
    spell must not postpone that write for ever (the owner prunes its journal by the
    tokens its pullers show)."""
    clock = [1000.0]
    west, link = _idle_link(mesh, clock=lambda: clock[0])
    west.execute("SELECT pg_current_xact_id()")
    assert link.run_once().rows == 0          # not due yet: the token stays behind
    idle = link.quiet.idle
    assert idle is not None and idle.token != idle.snapshot
    behind = mesh.one("eu-north", "SELECT token FROM sync.peer_state")
    assert link.run_once().rows == 0          # quiet
    assert mesh.one("eu-north", "SELECT token FROM sync.peer_state") == behind
    clock[0] += TOKEN_REFRESH                 # the refresh is due
    assert link.run_once().rows == 0
    assert mesh.one("eu-north", "SELECT token FROM sync.peer_state") == idle.snapshot != behind
