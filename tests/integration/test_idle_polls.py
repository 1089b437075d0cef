"""A poll that has nothing to do costs two short queries, and never hides a change.

After a batch that found nothing, a poll only compares the peer's snapshot, our token and
our policy with what that batch saw. Each test shows, through the peer's own statistics,
whether the peer's journal was read, and reads back the rows that must have arrived."""

from __future__ import annotations

import dataclasses

import psycopg

from sync.db import state
from tests.fix_pg import Mesh
from tests.integration.helpers import contact, peer_scans


def _journal_reads(west: psycopg.Connection, reader: psycopg.Connection) -> int:
    """Scans of the peer's journal so far."""
    return sum(peer_scans(west, reader, "sync.change_set"))


def _idle_link(mesh: Mesh):
    west = mesh.conn("eu-west")
    contact(west, "First")
    link = mesh.link("eu-north", "eu-west")
    assert link.run_once().initial
    assert link.run_once().rows == 0          # a batch that finds nothing
    assert link.source is not None
    return west, link


def test_a_quiet_poll_does_not_read_the_journal_and_a_change_ends_it(mesh: Mesh) -> None:
    west, link = _idle_link(mesh)
    before = _journal_reads(west, link.source)
    for _ in range(3):
        batch = link.run_once()
        assert batch.rows == 0 and batch.complete
    assert _journal_reads(west, link.source) == before

    cid = contact(west, "Second")
    assert link.run_once().rows == 1
    assert _journal_reads(west, link.source) > before
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
    west, link = _idle_link(mesh)
    north = mesh.conn("eu-north")
    # our own policy changed (its sha): the poll is a full one
    before = _journal_reads(west, link.source)
    policy = mesh.policy
    link._policy = lambda: dataclasses.replace(policy, sha="changed-by-the-test")
    assert link.run_once().rows == 0
    assert _journal_reads(west, link.source) > before
    # an operator's resync clears the token: the next poll loads from scratch
    assert link.run_once().rows == 0
    state.forget_peer(north, "eu-west")
    batch = link.run_once()
    assert batch.initial and batch.rows >= 1


def test_dead_letters_are_looked_at_once_a_second_not_on_every_poll(mesh: Mesh,
                                                                     monkeypatch) -> None:
    """The daemon asks after every poll; the link looks at most once per CHECK_EVERY."""
    from sync.apply import deadletters

    _, link = _idle_link(mesh)
    looked: list[float] = []
    real = link.retry_dead_letters
    monkeypatch.setattr(link, "retry_dead_letters",
                        lambda: looked.append(1) or real())
    clock = [1000.0]
    monkeypatch.setattr(deadletters.time, "monotonic", lambda: clock[0])
    for _ in range(5):
        assert link.retry_dead_letters_due() == (0, 0)
    assert len(looked) == 1
    clock[0] += deadletters.CHECK_EVERY
    link.retry_dead_letters_due()
    assert len(looked) == 2


def test_a_quiet_link_still_moves_its_token_once_the_refresh_is_due(mesh: Mesh) -> None:
    """A transaction at the peer that journals nothing for us (here one that only takes
    an id) moves the peer's snapshot but not our token until the refresh is due; a quiet
    spell must not postpone that write for ever (the owner prunes its journal by the
    tokens its pullers show)."""
    west, link = _idle_link(mesh)
    west.execute("SELECT pg_current_xact_id()")
    assert link.run_once().rows == 0          # not due yet: the token stays behind
    assert link._idle is not None and link._idle.token != link._idle.snapshot
    behind = link.applier.read_token()
    assert link.run_once().rows == 0          # quiet
    assert link.applier.read_token() == behind
    link._token_written -= 3600               # the refresh is due
    assert link.run_once().rows == 0
    assert link.applier.read_token() == link._idle.snapshot != behind
