"""Retention: the journal, tombstones and logs are pruned; a peer away past the horizon
reloads with no loss and no resurrection."""

from __future__ import annotations

import time
import uuid

from sync.config import RetentionConfig
from sync.runtime.retention import Pruner
from tests.fix_pg import Mesh, new_link
from tests.integration.helpers import contact


def _token(mesh: Mesh, region: str, peer: str) -> str | None:
    row = mesh.conn(region).execute("SELECT token FROM sync.peer_state WHERE peer = %s",
                                    (peer,)).fetchone()
    return row[0] if row else None


def _pruner(mesh: Mesh, region: str, pullers: list[str], **cfg) -> Pruner:
    return Pruner(mesh.urls[region], RetentionConfig(**cfg), pullers=pullers,
                  tokens=lambda: {p: _token(mesh, p, region) for p in pullers})


def _journal(mesh: Mesh, region: str) -> int:
    return mesh.one(region, "SELECT count(*) FROM sync.change_set")


def test_consumed_entries_are_pruned_and_unconsumed_ones_kept(mesh: Mesh) -> None:
    west = mesh.conn("eu-west")
    for i in range(5):
        contact(west, f"R{i}")
    pullers = ["eu-north", "us-east"]
    mesh.pull("eu-north", "eu-west")
    time.sleep(0.3)
    pruner = _pruner(mesh, "eu-west", pullers, journal=0.2, expire_after=3600)
    # us-east has not pulled: nothing is known to be consumed by every puller
    assert pruner.run_once()["change_set"] == 0
    mesh.pull("us-east", "eu-west")
    late = contact(west, "Late")            # after both pulled: consumed by neither
    time.sleep(0.3)
    assert pruner.run_once()["change_set"] == 5
    assert _journal(mesh, "eu-west") == 1
    assert mesh.one("eu-west", "SELECT pks FROM sync.change_set") == [late]
    # nothing was lost: both still get the late change
    mesh.pull("eu-north", "eu-west")
    mesh.pull("us-east", "eu-west")
    for region in pullers:
        assert mesh.one(region, "SELECT count(*) FROM contact WHERE contactid = %s",
                        (late,)) == 1
    assert mesh.one("eu-west", "SELECT count(*) FROM sync.journal_horizon") == 0


def test_logs_are_pruned_after_their_own_durations(mesh: Mesh) -> None:
    west = mesh.conn("eu-west")
    west.execute("INSERT INTO sync.dead_letter (peer, tablename, pk, op, error, last_failed_at)"
                 " VALUES ('eu-north', 'contact', %s, 'upsert', 'x', now() - interval '2 days')",
                 (uuid.uuid4(),))
    west.execute("INSERT INTO sync.integration_log (peer, kind, rows, policy_sha, applied_at)"
                 " VALUES ('eu-north', 'delta', 1, 'x', now() - interval '2 days'), "
                 "('eu-north', 'delta', 1, 'x', now())")
    counts = _pruner(mesh, "eu-west", ["eu-north"], dead_letter="1d", integration_log="1d",
                     batch=1).run_once()
    assert counts["dead_letter"] == 1 and counts["integration_log"] == 1
    assert mesh.one("eu-west", "SELECT count(*) FROM sync.integration_log") == 1
    assert "egress_log" not in counts          # kept forever unless configured


def test_a_peer_away_past_the_horizon_reloads_without_loss_or_resurrection(
        mesh: Mesh) -> None:
    west = mesh.conn("eu-west")
    kept, doomed = contact(west, "Kept"), contact(west, "Doomed")
    mesh.pull("eu-north", "eu-west")
    # eu-north goes away; meanwhile eu-west deletes, inserts, edits …
    west.execute("DELETE FROM contact WHERE contactid = %s", (doomed,))
    born = contact(west, "Born")
    west.execute("UPDATE contact SET firstname = 'Edited' WHERE contactid = %s", (kept,))
    time.sleep(0.3)
    # … and prunes past eu-north's token: journal entries and the tombstone are gone
    counts = _pruner(mesh, "eu-west", ["eu-north"], journal=0.1, expire_after=0.2).run_once()
    assert counts["change_set"] >= 3 and counts["tombstone"] == 1
    assert mesh.one("eu-west", "SELECT count(*) FROM sync.tombstone") == 0
    assert mesh.one("eu-west", "SELECT count(*) FROM sync.journal_horizon") == 1
    link = mesh.link("eu-north", "eu-west")
    batch = link.run_once()                 # expired: reloads at once
    assert batch.initial
    assert link.expired_at is not None      # on /status as token_expired_at
    while batch.full:
        batch = link.run_once()
    north = {r[0]: r[1] for r in mesh.conn("eu-north").execute(
        "SELECT contactid, firstname FROM contact")}
    assert north == {kept: "Edited", born: "Jo"}   # nothing lost, nothing resurrected
    assert mesh.one("eu-north", "SELECT count(*) FROM sync.retraction_log "
                                "WHERE action = 'delete_keys'") == 1
    assert mesh.link("eu-north", "eu-west").run_once().initial is False  # and it follows on


def test_an_expired_token_stops_the_link_when_reloading_is_off(mesh: Mesh) -> None:
    from sync.errors import TokenExpired
    west = mesh.conn("eu-west")
    contact(west, "A")
    mesh.pull("eu-north", "eu-west")
    contact(west, "B")
    time.sleep(0.3)
    _pruner(mesh, "eu-west", ["eu-north"], journal=0.1, expire_after=0.2).run_once()
    link = new_link(region="eu-north", peer="eu-west", peer_conninfo=mesh.urls["eu-west"],
                    local_conninfo=mesh.urls["eu-north"], policy=lambda: mesh.policy,
                    resync_on_expiry=False)
    try:
        try:
            link.run_once()
            raise AssertionError("an expired token must stop the link")
        except TokenExpired as exc:
            assert "regionsync resync" in str(exc)
    finally:
        link.close()
    assert _token(mesh, "eu-north", "eu-west") is not None     # kept for the operator


def test_idle_pruning_deletes_nothing(mesh: Mesh) -> None:
    contact(mesh.conn("eu-west"), "Fresh")
    mesh.pull("eu-north", "eu-west")
    pruner = _pruner(mesh, "eu-west", ["eu-north"])          # the defaults: 7 and 30 days
    assert sum(pruner.run_once().values()) == 0
    assert _journal(mesh, "eu-west") == 1
    assert mesh.one("eu-west", "SELECT count(*) FROM sync.journal_horizon") == 0


def test_the_daemon_prunes_what_its_peers_consumed(mesh: Mesh, tmp_path) -> None:
    """Real daemons: the leader's pruning job, driven by its peers' own tokens."""
    from tests.fix_daemons import mesh_daemons, wait_for
    urls = {r: mesh.urls[r] for r in ("eu-west", "eu-north")}
    keys = [contact(mesh.conn("eu-west"), f"P{i}") for i in range(3)]
    with mesh_daemons(tmp_path, urls, extra={
            "retention": "{journal: 1s, expire_after: 1d, interval: 0.5}"}):
        wait_for(lambda: mesh.one("eu-north", "SELECT count(*) FROM contact") == 3, 60)
        wait_for(lambda: _journal(mesh, "eu-west") == 0, 60, "pruned journal")
        # still in sync afterwards
        more = contact(mesh.conn("eu-west"), "After")
        wait_for(lambda: mesh.one("eu-north", "SELECT count(*) FROM contact "
                                              "WHERE contactid = %s", (more,)) == 1, 60)
    assert mesh.one("eu-north", "SELECT count(*) FROM contact WHERE contactid = ANY(%s)",
                    (keys,)) == 3
