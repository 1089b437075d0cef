"""Deterministic interleavings on one key (invariant 4), no sleeps.

Two writers of the same key in region eu-west, each one of: apply from peer eu-north,
apply from peer us-east, or the application itself; each doing an insert, an update, a
delete or a re-insert (insert after delete). The first is paused holding its transaction
open (apply: after its data statements, before the commit; the application: after its
statement); the second runs until it is seen waiting for a lock or done; then the first
commits, then the second. Afterwards eu-west must hold the last-writer-wins maximum of
the versions both committed — and a delete's tombstone must keep any older version out.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime

import psycopg
import pytest

from tests.fix_pg import Mesh
from tests.integration.helpers import contact

OPS = ["insert", "update", "delete", "reinsert"]
OP_PAIRS = list(itertools.product(OPS, OPS))
Version = tuple[datetime, str, bool]   # modifiedon, origin, deleted


def _version(conn: psycopg.Connection, key: uuid.UUID) -> Version | None:
    row = conn.execute("SELECT modifiedon, sync_origin FROM contact WHERE contactid = %s",
                       (key,)).fetchone()
    if row:
        return row[0], row[1], False
    tomb = conn.execute("SELECT modifiedon, origin FROM sync.tombstone WHERE tablename = "
                        "'contact' AND pk = %s", (key,)).fetchone()
    return (tomb[0], tomb[1], True) if tomb else None


def _prepare(conn: psycopg.Connection, key: uuid.UUID, op: str) -> None:
    """What must exist in a region before ``op`` can run there."""
    if op in ("update", "delete", "reinsert"):
        contact(conn, "Base", contactid=key)
    if op == "reinsert":
        conn.execute("DELETE FROM contact WHERE contactid = %s", (key,))


def _write(conn: psycopg.Connection, key: uuid.UUID, op: str, tag: str) -> None:
    if op in ("insert", "reinsert"):
        contact(conn, tag, contactid=key)
    elif op == "update":
        conn.execute("UPDATE contact SET lastname = %s WHERE contactid = %s", (tag, key))
    else:
        conn.execute("DELETE FROM contact WHERE contactid = %s", (key,))


def _waiting_or_done(mesh: Mesh, pid: int, thread: threading.Thread) -> None:
    """Until the backend ``pid`` waits for a lock, or ``thread`` has finished."""
    end = time.monotonic() + 20
    watcher = mesh.new_conn("eu-west")
    try:
        while time.monotonic() < end:
            if not thread.is_alive() or watcher.execute(
                    "SELECT count(*) FROM pg_locks WHERE pid = %s AND NOT granted",
                    (pid,)).fetchone()[0]:
                return
            time.sleep(0.005)
    finally:
        watcher.close()
    raise AssertionError("second writer neither waited nor finished")


class ApplyActor:
    """Applies what a peer authored for the key, pausing before its commit when asked."""

    def __init__(self, mesh: Mesh, peer: str) -> None:
        self.mesh, self.peer = mesh, peer
        self.link = mesh.link("eu-west", peer, apply_connections=1)
        self.link.warm()
        self.paused, self.release = threading.Event(), threading.Event()
        self.error: BaseException | None = None

    @property
    def pid(self) -> int:
        return self.link.conns.open().target.info.backend_pid

    def source_write(self, key: uuid.UUID, op: str) -> Version:
        conn = self.mesh.conn(self.peer)
        _prepare(conn, key, op)
        _write(conn, key, op, f"from-{self.peer}")
        version = _version(conn, key)
        assert version is not None
        return version

    def run(self, pause: bool) -> threading.Thread:
        def hook(step: str) -> None:
            if pause and step == "token":
                self.paused.set()
                self.release.wait(30)

        def body() -> None:
            try:
                self.link.conns.open().applier.fault_hook = hook
                self.link.run_once()
            except BaseException as exc:
                self.error = exc
            finally:
                self.paused.set()
        t = threading.Thread(target=body, daemon=True)
        t.start()
        return t


class LocalActor:
    """The application in eu-west: one statement in a transaction held open when asked."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.conn = psycopg.connect(mesh.urls["eu-west"], autocommit=False)
        self.pid = self.conn.info.backend_pid
        self.version: Version | None = None
        self.error: BaseException | None = None

    def prepare(self, key: uuid.UUID, op: str) -> None:
        _prepare(self.mesh.conn("eu-west"), key, op)

    def run(self, key: uuid.UUID, op: str, commit: threading.Event | None) -> threading.Thread:
        def body() -> None:
            try:
                _write(self.conn, key, op, "local")
                self.version = _version(self.conn, key)
                if commit is not None:
                    ready.set()
                    commit.wait(30)
                self.conn.commit()
            except psycopg.errors.UniqueViolation:  # the app's insert lost the race: no version
                self.conn.rollback()
                self.version = None
            except BaseException as exc:
                self.error = exc
            finally:
                ready.set()
                self.conn.close()
        ready = threading.Event()
        t = threading.Thread(target=body, daemon=True)
        t.start()
        if commit is not None:
            ready.wait(30)    # its statement ran; the transaction is open
        return t


def _expect(mesh: Mesh, key: uuid.UUID, versions: list[Version | None]) -> None:
    committed = [v for v in versions if v is not None]
    winner = max(committed, key=lambda v: (v[0], v[1]))
    for _ in range(2):   # and again after a replay of both peers
        got = _version(mesh.conn("eu-west"), key)
        row = mesh.one("eu-west", "SELECT count(*) FROM contact WHERE contactid = %s", (key,))
        if winner[2]:
            assert row == 0, f"resurrected: {got} over delete {winner}"
        else:
            assert got == winner, f"eu-west holds {got}, newest is {winner}"
        for peer in ("eu-north", "us-east"):
            mesh.pull("eu-west", peer)


def _apply_first_then(mesh: Mesh, first: ApplyActor,
                      second: Callable[[], threading.Thread], second_pid: int) -> None:
    """``first`` applies and pauses before its commit; ``second`` runs until it waits for a
    lock or is done; then ``first`` commits, and both finish."""
    t1 = first.run(pause=True)
    assert first.paused.wait(30)
    t2 = second()
    _waiting_or_done(mesh, second_pid, t2)
    first.release.set()
    t1.join(30)
    t2.join(30)


@pytest.mark.parametrize("first_commits", ["older", "newer"])
@pytest.mark.parametrize(("op_a", "op_b"), OP_PAIRS)
def test_two_peers_appliers_on_one_key(mesh: Mesh, op_a: str, op_b: str,
                                       first_commits: str) -> None:
    key = uuid.uuid4()
    a, b = ApplyActor(mesh, "eu-north"), ApplyActor(mesh, "us-east")
    older, newer = a.source_write(key, op_a), b.source_write(key, op_b)   # b is newer
    first, second = (a, b) if first_commits == "older" else (b, a)
    _apply_first_then(mesh, first, lambda: second.run(pause=False), second.pid)
    assert a.error is None and b.error is None, (a.error, b.error)
    _expect(mesh, key, [older, newer])


@pytest.mark.parametrize("first", ["apply", "application"])
@pytest.mark.parametrize(("op_peer", "op_local"), OP_PAIRS)
def test_applier_and_application_on_one_key(mesh: Mesh, op_peer: str, op_local: str,
                                            first: str) -> None:
    key = uuid.uuid4()
    peer, local = ApplyActor(mesh, "eu-north"), LocalActor(mesh)
    local.prepare(key, op_local)
    if first == "application":
        # the application writes and holds its transaction; the peer's version is made
        # after it (newer), and arrives while the application has not committed yet
        commit = threading.Event()
        t_local = local.run(key, op_local, commit)
        remote = peer.source_write(key, op_peer)
        t_apply = peer.run(pause=False)
        _waiting_or_done(mesh, peer.pid, t_apply)
        commit.set()
        t_local.join(30)
        t_apply.join(30)
    else:
        remote = peer.source_write(key, op_peer)
        # the application's statement may wait for apply's locks
        _apply_first_then(mesh, peer, lambda: local.run(key, op_local, None), local.pid)
    assert peer.error is None and local.error is None, (peer.error, local.error)
    _expect(mesh, key, [remote, local.version])


def test_a_multi_row_update_that_waits_journals_every_row_it_changed(mesh: Mesh) -> None:
    """The statement updates `first`, then waits for `second`, which another transaction
    updates again (a newer version) before committing: both rows must be journaled."""
    west = mesh.conn("eu-west")
    first, second = contact(west, "A"), contact(west, "B")   # a scan meets them in this order
    holder = psycopg.connect(mesh.urls["eu-west"], autocommit=False)
    writer = psycopg.connect(mesh.urls["eu-west"], autocommit=True)
    try:
        holder.execute("UPDATE contact SET firstname = 'held' WHERE contactid = %s", (second,))

        def update_both() -> None:
            writer.execute("UPDATE contact SET lastname = 'both' WHERE contactid = ANY(%s)",
                           ([first, second],))
        t = threading.Thread(target=update_both, daemon=True)
        t.start()
        _waiting_or_done(mesh, writer.info.backend_pid, t)
        holder.execute("UPDATE contact SET firstname = 'held again' WHERE contactid = %s",
                       (second,))
        holder.commit()
        t.join(30)
    finally:
        holder.close()
        writer.close()
    for key in (first, second):
        version = mesh.one("eu-west", "SELECT versionnumber FROM contact WHERE contactid = %s",
                           (key,))
        assert mesh.one("eu-west", "SELECT count(*) FROM sync.change_log WHERE pk = %s "
                                   "AND versionnumber = %s", (key, version)) == 1, key
    mesh.pull("eu-north", "eu-west")
    assert mesh.one("eu-north", "SELECT count(*) FROM contact WHERE lastname = 'both'") == 2
