"""Per-column last-writer-wins (migration 0018): no edit is lost to an edit of another
column, an edit of a column that never leaves its region shadows nothing abroad and is
not heard of there, and a delete wins over every edit of the row it deleted.

The links are pulled by hand, so every pair of edits below is truly concurrent: neither
region has seen the other's edit when it writes its own.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest

from sync.policy import load_policy
from sync.source.egress import apply_egress
from tests.fix_pg import POLICIES, Mesh
from tests.integration.helpers import contact, hub_rounds
from tests.integration.test_residency import as_destination

MESH = ["eu-west", "eu-north", "us-east"]


def _everywhere(mesh: Mesh, cid: uuid.UUID, columns: str) -> dict[str, tuple | None]:
    return {r: mesh.conn(r).execute(f"SELECT {columns} FROM contact WHERE contactid = %s",
                                    (cid,)).fetchone() for r in MESH}


def _seeded(mesh: Mesh) -> uuid.UUID:
    cid = contact(mesh.conn("eu-west"), "Merge", medical="stable")
    mesh.conn("eu-west").execute("UPDATE contact SET telephone1 = '000' WHERE contactid = %s",
                                 (cid,))
    mesh.sync()
    return cid


def test_edits_of_different_columns_in_two_regions_both_survive(mesh: Mesh) -> None:
    cid = _seeded(mesh)
    mesh.conn("eu-west").execute("UPDATE contact SET telephone1 = '111' WHERE contactid = %s",
                                 (cid,))
    mesh.conn("eu-north").execute(
        "UPDATE contact SET address1_country = 'SE' WHERE contactid = %s", (cid,))
    mesh.sync()
    got = _everywhere(mesh, cid, "address1_country, telephone1")
    assert got["eu-west"] == got["eu-north"] == got["us-east"] == ("SE", "111")
    # the same versions everywhere the column is held
    versions = _everywhere(mesh, cid, "sync.describe_version("
                                      "coalesce(address1_country__v, sync_base))")
    assert len(set(versions.values())) == 1
    assert versions["eu-west"][0].endswith(" eu-north")


def test_a_later_edit_of_a_region_local_column_keeps_a_foreign_edit(mesh: Mesh) -> None:
    """The nurse's edit (medical notes, never leaves eu-west) comes after the phone edit
    in eu-north: row-level last-writer-wins gave every region the old phone."""
    cid = _seeded(mesh)
    mesh.conn("eu-north").execute("UPDATE contact SET telephone1 = '222' WHERE contactid = %s",
                                  (cid,))
    mesh.conn("eu-west").execute(
        "UPDATE contact SET medical_notes = 'worse' WHERE contactid = %s", (cid,))
    mesh.sync()
    got = _everywhere(mesh, cid, "telephone1, medical_notes")
    assert got["eu-west"] == ("222", "worse")
    assert got["eu-north"] == ("222", None)
    assert got["us-east"] == ("222", None)


def test_an_edit_of_a_region_local_column_is_not_heard_of_abroad(mesh: Mesh) -> None:
    cid = _seeded(mesh)
    north_before = _everywhere(mesh, cid, "modifiedon, sync_origin, versionnumber")["eu-north"]
    # the owner's journal as its destination sees it, before and after a medical edit
    west = mesh.conn("eu-west")
    apply_egress(west, load_policy(POLICIES, mesh.schema), mesh.schema, ["eu-north"])
    token = west.execute("SELECT pg_current_snapshot()::text").fetchone()[0]
    west.execute("UPDATE contact SET medical_notes = 'worse', implant_serial = 'SN-2' "
                 "WHERE contactid = %s", (cid,))
    west.execute("UPDATE contact SET medical_notes = medical_notes, telephone1 = telephone1 "
                 "WHERE contactid = %s", (cid,))       # SET a = a: no change at all
    with psycopg.connect(as_destination(mesh, "eu-west", "eu-north"), autocommit=True) as dest:
        seen = dest.execute("SELECT count(*) FROM sync.egress_changes(%s, NULL, 'eu-west', false)",
                            (token,)).fetchone()[0]
        assert seen == 0
        for forbidden in ("SELECT medical_notes__v FROM contact",
                          "SELECT implant_serial__v FROM contact",
                          "SELECT modifiedon FROM contact", "SELECT sync_origin FROM contact",
                          "SELECT sync_changed FROM contact"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                dest.execute(forbidden)
        # what it may read of the row's versions: the sent columns' and the base
        dest.execute("SELECT telephone1__v, address1_country__v, sync_base FROM contact")
    # the owner's own journal has the edit (its own users see "last modified" move)
    assert west.execute("SELECT count(*) FROM sync.change_set WHERE txid >= "
                        "pg_snapshot_xmin(%s::pg_snapshot) AND NOT pg_visible_in_snapshot("
                        "txid, %s::pg_snapshot)", (token, token)).fetchone()[0] == 1
    mesh.sync()
    assert _everywhere(mesh, cid, "modifiedon, sync_origin, versionnumber")["eu-north"] \
        == north_before


def test_the_same_column_in_two_regions_takes_the_later_edit(mesh: Mesh) -> None:
    cid = _seeded(mesh)
    mesh.conn("eu-west").execute("UPDATE contact SET lastname = 'West' WHERE contactid = %s",
                                 (cid,))
    mesh.conn("eu-north").execute("UPDATE contact SET lastname = 'North', firstname = 'N' "
                                  "WHERE contactid = %s", (cid,))
    mesh.sync()
    got = _everywhere(mesh, cid, "lastname, firstname")
    assert got["eu-west"] == got["eu-north"] == got["us-east"] == ("North", "N")


def test_a_delete_wins_over_a_concurrent_later_edit_and_a_reinsert_wins_over_it(
        mesh: Mesh) -> None:
    cid = _seeded(mesh)
    mesh.conn("eu-north").execute("DELETE FROM contact WHERE contactid = %s", (cid,))
    mesh.conn("eu-west").execute("UPDATE contact SET telephone1 = '333' WHERE contactid = %s",
                                 (cid,))      # later than the delete, never saw it
    mesh.sync()
    assert _everywhere(mesh, cid, "1") == {r: None for r in MESH}
    # the edit that lost is on record where it was made
    assert mesh.one("eu-west", "SELECT count(*) FROM sync.conflict_log WHERE pk = %s",
                    (cid,)) >= 1
    # a re-insert after the delete brings the key back everywhere, whole
    contact(mesh.conn("us-east"), "Again", contactid=cid, medical=None, implant=None)
    mesh.sync()
    got = _everywhere(mesh, cid, "lastname, firstname, address1_country")
    assert got["eu-west"] == got["eu-north"] == got["us-east"] == ("Again", "Jo", "IE")


def test_an_older_edit_arriving_late_does_not_resurrect_a_deleted_row(mesh: Mesh) -> None:
    cid = _seeded(mesh)
    mesh.conn("eu-west").execute("UPDATE contact SET telephone1 = '444' WHERE contactid = %s",
                                 (cid,))
    mesh.conn("eu-north").execute("DELETE FROM contact WHERE contactid = %s", (cid,))
    mesh.pull("us-east", "eu-north")       # us-east hears of the delete first
    mesh.sync()
    assert _everywhere(mesh, cid, "1") == {r: None for r in MESH}


def test_a_local_insert_cannot_forge_column_versions(mesh: Mesh) -> None:
    west = mesh.conn("eu-west")
    cid = uuid.uuid4()
    forged = "sync.version_of('2140-01-01 00:00:00+00', 5)"     # far ahead, another origin
    west.execute("INSERT INTO contact (contactid, lastname, telephone1, telephone1__v, sync_base)"
                 f" VALUES (%s, 'Forger', '999', {forged}, {forged})", (cid,))
    base, v, origin = west.execute("SELECT sync.describe_version(sync_base), telephone1__v, "
                                   "sync_origin FROM contact WHERE contactid = %s",
                                   (cid,)).fetchone()
    assert v is None and origin == "eu-west"
    assert base.endswith(" eu-west") and not base.startswith("2140")


def _conflicts(mesh: Mesh, cid: uuid.UUID) -> dict[str, list[tuple]]:
    return {r: mesh.conn(r).execute(
        "SELECT columns, loser_origin, winner_origin FROM sync.conflict_log WHERE pk = %s",
        (cid,)).fetchall() for r in MESH}


def test_the_conflict_log_names_the_columns_that_lost_with_both_versions(mesh: Mesh) -> None:
    cid = _seeded(mesh)
    west, north = mesh.conn("eu-west"), mesh.conn("eu-north")
    west.execute("UPDATE contact SET lastname = 'West', telephone1 = '555' "
                 "WHERE contactid = %s", (cid,))
    north.execute("UPDATE contact SET lastname = 'North' WHERE contactid = %s", (cid,))
    mesh.sync()
    logged = _conflicts(mesh, cid)
    # eu-west's lastname lost (eu-north wrote later); its phone did not: only lastname
    [(columns, loser, winner)] = logged["eu-west"]
    assert set(columns) == {"lastname"} and (loser, winner) == ("eu-west", "eu-north")
    lost, won = columns["lastname"]["lost"], columns["lastname"]["won"]
    assert lost.endswith(" eu-west") and won.endswith(" eu-north") and lost < won
    assert won == mesh.one("eu-west", "SELECT sync.describe_version(lastname__v) FROM contact "
                           "WHERE contactid = %s", (cid,))
    # no values in the per-column record: versions only
    assert "West" not in str(columns) and "North" not in str(columns)


def test_edits_of_different_columns_are_no_conflict(mesh: Mesh) -> None:
    cid = _seeded(mesh)
    mesh.conn("eu-west").execute("UPDATE contact SET telephone1 = '666' WHERE contactid = %s",
                                 (cid,))
    mesh.conn("eu-north").execute("UPDATE contact SET firstname = 'F' WHERE contactid = %s",
                                  (cid,))
    mesh.sync()
    assert _conflicts(mesh, cid) == {r: [] for r in MESH}


@pytest.mark.parametrize("grouped", [True, False])
def test_a_column_group_moves_as_a_unit(mesh: Mesh, tmp_path: Path, grouped: bool) -> None:
    """eu-west moves an account to Lund, SE; eu-north, later, only to Cork (still IE). A
    CHECK says Cork is in IE. Merged column by column, eu-west would pair Cork with SE and
    refuse the row; as a group, the newer side's city and country move together."""
    policy_dir = tmp_path / "policy"
    policy_dir.mkdir()
    text = (POLICIES / "regionsync.yaml").read_text()
    if grouped:
        text += "\ncolumn_groups:\n  account: [[address1_city, address1_country]]\n"
    (policy_dir / "policy.yaml").write_text(text)
    mesh.policy = load_policy(policy_dir, mesh.schema)
    assert mesh.policy.column_groups == ({"account": (("address1_city", "address1_country"),)}
                                         if grouped else {})
    west, north = mesh.conn("eu-west"), mesh.conn("eu-north")
    aid = uuid.uuid4()
    west.execute("INSERT INTO account (accountid, accountnumber, name, address1_city, "
                 "address1_country) VALUES (%s, 'G-1', 'Group', 'Dublin', 'IE')", (aid,))
    mesh.sync()
    for r in MESH:
        mesh.conn(r).execute("ALTER TABLE account ADD CONSTRAINT cork_is_irish CHECK "
                             "(address1_city IS DISTINCT FROM 'Cork' OR address1_country = 'IE')")
    west.execute("UPDATE account SET address1_city = 'Lund', address1_country = 'SE' "
                 "WHERE accountid = %s", (aid,))
    north.execute("UPDATE account SET address1_city = 'Cork' WHERE accountid = %s", (aid,))
    mesh.sync()
    got = {r: mesh.conn(r).execute("SELECT address1_city, address1_country FROM account "
                                   "WHERE accountid = %s", (aid,)).fetchone() for r in MESH}
    dead = mesh.one("eu-west", "SELECT count(*) FROM sync.dead_letter")
    if grouped:
        assert got == {r: ("Cork", "IE") for r in MESH} and dead == 0
    else:     # what the group prevents: eu-west cannot take Cork beside its SE
        assert got["eu-west"] == ("Lund", "SE") and dead == 1


def test_hub_and_spoke_merges_per_column_too(mesh: Mesh) -> None:
    """Spokes eu-north and us-east talk only through the hub eu-west: concurrent edits of
    different columns in the two spokes both reach everyone, a spoke's later medical edit
    shadows nothing, and the hub forwards the merge without an echo."""
    hub, spokes = "eu-west", ["eu-north", "us-east"]
    for s in spokes:
        mesh.link(s, hub, origins="any")


    cid = contact(mesh.conn("eu-north"), "Spoke", medical="home")
    hub_rounds(mesh, hub, spokes)
    mesh.conn("us-east").execute("UPDATE contact SET telephone1 = '777' WHERE contactid = %s",
                                 (cid,))
    mesh.conn("eu-north").execute("UPDATE contact SET firstname = 'Hub' WHERE contactid = %s",
                                  (cid,))
    mesh.conn("eu-north").execute(
        "UPDATE contact SET medical_notes = 'later' WHERE contactid = %s", (cid,))
    hub_rounds(mesh, hub, spokes)
    got = _everywhere(mesh, cid, "firstname, telephone1, medical_notes")
    assert got == {"eu-north": ("Hub", "777", "later"), "eu-west": ("Hub", "777", None),
                   "us-east": ("Hub", "777", None)}
    journals = {r: mesh.one(r, "SELECT count(*) FROM sync.change_set") for r in MESH}
    assert hub_rounds(mesh, hub, spokes) == 0
    assert {r: mesh.one(r, "SELECT count(*) FROM sync.change_set") for r in MESH} == journals
