"""Narrow reads (protocol 4): a delta whose range holds only updates sends the columns
those updates changed, with their versions, instead of every sent column; the journal
says which (``sync.egress_changes(...).cols``, cut to what the destination is sent).

Observed on the pages the link applies and on the rows read back from every region: a
narrow page must change nothing a whole page would not, a key the target has no row of
(its insert came from a region we have not heard from yet) must arrive whole before the
token moves, and the masks must tell a destination nothing of a column it is not sent.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from sync.db.migrate import migrate
from sync.link import PeerLink
from sync.policy import load_policy
from sync.protocol import served
from sync.records import Segment
from sync.source.egress import apply_egress, role_for
from sync.testing.cluster import LocalCluster
from sync.testing.verify import synced_rows
from tests.fix_pg import CAPTURE, POLICIES, Mesh, new_link
from tests.integration.helpers import contact, release_tree
from tests.integration.test_protocol import SERVE
from tests.integration.test_residency import as_destination

REGIONS = ["eu-west", "eu-north", "us-east"]


def _seen(link: PeerLink) -> list[Segment]:
    """The upsert segments ``link`` applies from now on (every lane goes through
    ``PageSink.apply_on``)."""
    seen: list[Segment] = []
    apply_on = link.sink.apply_on

    def record(applier, page, **kw):
        seen.extend(s for s in page.segments if s.kind == "upsert")
        return apply_on(applier, page, **kw)

    link.sink.apply_on = record  # type: ignore[method-assign]
    return seen


def _whole(mesh: Mesh, table: str = "contact") -> tuple[str, ...]:
    info = mesh.schema.tables[table]
    rule = mesh.policy.rule_for(table, "eu-north")
    assert rule is not None
    return (*rule.wire_columns(info), *rule.version_columns(info))


def _same_everywhere(mesh: Mesh, regions: list[str]) -> None:
    """Every region holds the same rows, in the columns every region is sent."""
    for table in ("contact", "account"):
        rows = {r: mesh.rows(r, table, "us-east") for r in regions}
        assert all(rows[r] == rows[regions[0]] for r in regions), table


def test_a_range_of_updates_sends_only_the_columns_it_changed(mesh: Mesh) -> None:
    west = mesh.conn("eu-west")
    ids = [contact(west, f"Narrow-{i}") for i in range(3)]
    mesh.pull("eu-north", "eu-west")
    seen = _seen(mesh.link("eu-north", "eu-west"))

    west.execute("UPDATE contact SET telephone1 = 'tel-' || lastname WHERE contactid = ANY(%s)",
                 (ids,))
    west.execute("UPDATE contact SET medical_notes = 'stays home' WHERE contactid = %s",
                 (ids[0],))
    mesh.pull("eu-north", "eu-west")
    assert [(s.narrow, set(s.columns), s.rows) for s in seen] == [
        (True, {"contactid", "telephone1", "createdon", "modifiedon", "sync_origin",
                "telephone1__v", "sync_base"}, 3)]
    # every synced column, version, time and origin as a whole page would have left them
    assert mesh.rows("eu-north", "contact") == mesh.rows("eu-west", "contact", "eu-north")
    assert mesh.one("eu-north", "SELECT count(*) FROM contact WHERE telephone1 LIKE 'tel-%%'"
                    ) == 3

    # an insert in the range: the whole table's rows travel whole
    seen.clear()
    contact(west, "Fresh")
    west.execute("UPDATE contact SET firstname = 'Again' WHERE contactid = %s", (ids[1],))
    mesh.pull("eu-north", "eu-west")
    assert [(s.narrow, s.columns) for s in seen] == [(False, _whole(mesh))]
    assert mesh.rows("eu-north", "contact") == mesh.rows("eu-west", "contact", "eu-north")


def test_a_column_group_travels_whole_when_one_of_it_changed(mesh: Mesh,
                                                             tmp_path: Path) -> None:
    policy_dir = tmp_path / "policy"
    policy_dir.mkdir()
    (policy_dir / "policy.yaml").write_text(
        (POLICIES / "regionsync.yaml").read_text()
        + "\ncolumn_groups:\n  contact: [[telephone1, address1_country]]\n")
    mesh.policy = load_policy(policy_dir, mesh.schema)
    west = mesh.conn("eu-west")
    cid = contact(west, "Grouped")
    mesh.pull("eu-north", "eu-west")
    seen = _seen(mesh.link("eu-north", "eu-west"))
    west.execute("UPDATE contact SET telephone1 = '555' WHERE contactid = %s", (cid,))
    mesh.pull("eu-north", "eu-west")
    assert [(s.narrow, set(s.columns)) for s in seen] == [
        (True, {"contactid", "telephone1", "address1_country", "createdon", "modifiedon",
                "sync_origin", "telephone1__v", "address1_country__v", "sync_base"})]
    assert mesh.rows("eu-north", "contact") == mesh.rows("eu-west", "contact", "eu-north")


@pytest.mark.parametrize("page_size", [5000, 2])
def test_a_key_the_target_has_no_row_of_arrives_whole_before_the_token_moves(
        mesh: Mesh, page_size: int) -> None:
    """eu-west creates three contacts; eu-north has them and edits their names; us-east
    hears from eu-north first. eu-north's range holds only its updates (the inserts were
    eu-west's), so they travel narrow, and us-east has no row to update: it reads those
    keys whole from eu-north, in the same snapshot, before its token for eu-north moves.
    In one page (held back with the token) and in several (applied on the lanes)."""
    west, north = mesh.conn("eu-west"), mesh.conn("eu-north")
    link = mesh.link("us-east", "eu-north", page_size=page_size)
    link.run_once()                        # the initial load (of nothing): deltas from now
    ids = [contact(west, f"Elsewhere-{i}") for i in range(3)]
    mesh.pull("eu-north", "eu-west")
    north.execute("UPDATE contact SET firstname = 'north' WHERE contactid = ANY(%s)", (ids,))
    seen = _seen(link)
    batches = mesh.pull("us-east", "eu-north")
    east = mesh.conn("us-east")
    assert east.execute("SELECT count(*) FROM contact WHERE contactid = ANY(%s) AND "
                        "firstname = 'north' AND lastname LIKE 'Elsewhere-%%' AND "
                        "address1_country = 'IE'", (ids,)).fetchone() == (3,)
    assert mesh.rows("us-east", "contact", "us-east") == mesh.rows("eu-north", "contact",
                                                                   "us-east")
    assert mesh.one("us-east", "SELECT count(*) FROM sync.dead_letter") == 0
    assert seen[0].narrow and sum(s.rows for s in seen if s.narrow) == 3
    assert [s.rows for s in seen if not s.narrow] in ([3], [2, 1])   # then read whole
    assert sum(b.rows for b in batches) == 3
    assert link.run_once().rows == 0          # the token covers them: nothing is read again
    mesh.sync(REGIONS)
    _same_everywhere(mesh, REGIONS)


def test_a_key_another_link_inserts_while_a_narrow_page_applies_is_read_whole(
        mesh: Mesh) -> None:
    """us-east has no row of a contact yet when eu-north's narrow edit of it arrives; just
    after that page's UPDATE (which found nothing), us-east's link from eu-west inserts the
    contact, committed, with the same incarnation. The page must still read the key whole:
    what it skipped is judged in the UPDATE's own snapshot, not in a later one that would
    take the new row for one it had seen, and drop eu-north's edit for good."""
    west, north = mesh.conn("eu-west"), mesh.conn("eu-north")
    for source in ("eu-north", "eu-west"):
        mesh.link("us-east", source).run_once()        # initial loads: deltas from now
    cid = contact(west, "Racing")
    mesh.pull("eu-north", "eu-west")
    north.execute("UPDATE contact SET firstname = 'north' WHERE contactid = %s", (cid,))
    link = mesh.link("us-east", "eu-north")
    applier = link.conns.open().applier
    seen = _seen(link)
    inserted: list[int] = []

    def insert_meanwhile(step: str) -> None:
        if step == "upserted" and not inserted:
            inserted.append(sum(b.rows for b in mesh.pull("us-east", "eu-west")))

    applier.fault_hook = insert_meanwhile
    try:
        mesh.pull("us-east", "eu-north")
    finally:
        applier.fault_hook = None
    assert inserted == [1]
    assert mesh.one("us-east", "SELECT firstname FROM contact WHERE contactid = %s",
                    (cid,)) == "north"
    assert [s.narrow for s in seen] == [True, False]
    mesh.sync(REGIONS)
    _same_everywhere(mesh, REGIONS)


def test_a_narrow_update_never_writes_over_another_incarnation(mesh: Mesh) -> None:
    """us-east deletes a contact and creates it again under the same key; eu-north hears
    of it and edits the new one's name; eu-west has heard only of the old one. eu-north's
    range is that edit alone: narrow. Written into eu-west's old incarnation it would pair
    the new name with the old row's other columns; instead eu-west reads the key whole and
    takes the newer incarnation whole. The other way round (an edit of the old incarnation
    reaching the new one) writes nothing: the delete won over the old row's edits."""
    west, north, east = (mesh.conn(r) for r in REGIONS)
    for target, source in (("eu-west", "eu-north"), ("eu-north", "eu-west")):
        mesh.link(target, source).run_once()          # initial loads: deltas from now
    cid = contact(west, "Reborn")
    mesh.sync(REGIONS)
    east.execute("DELETE FROM contact WHERE contactid = %s", (cid,))
    contact(east, "Reborn-2", contactid=cid, country="US")
    mesh.pull("eu-north", "us-east")
    north.execute("UPDATE contact SET firstname = 'Second' WHERE contactid = %s", (cid,))
    west.execute("UPDATE contact SET telephone1 = 'old life' WHERE contactid = %s", (cid,))
    seen = _seen(mesh.link("eu-west", "eu-north"))
    mesh.pull("eu-west", "eu-north")
    row = "SELECT lastname, firstname, address1_country, telephone1 FROM contact " \
          "WHERE contactid = %s"
    assert west.execute(row, (cid,)).fetchone() == ("Reborn-2", "Second", "US", None)
    assert seen[0].narrow and not seen[-1].narrow      # narrow, then the key read whole
    seen = _seen(mesh.link("eu-north", "eu-west"))
    mesh.pull("eu-north", "eu-west")                  # the old row's phone: loses whole
    assert north.execute(row, (cid,)).fetchone() == ("Reborn-2", "Second", "US", None)
    mesh.sync(REGIONS)
    _same_everywhere(mesh, REGIONS)
    assert east.execute(row, (cid,)).fetchone() == ("Reborn-2", "Second", "US", None)


def test_the_masks_a_destination_reads_name_only_columns_it_is_sent(mesh: Mesh) -> None:
    """The shipped policy sends eu-north the phone and us-east not; neither any medical
    column. Each destination reads of each entry only the bits of columns it is sent, and
    no entry at all of an update of nothing it is sent."""
    west = mesh.conn("eu-west")
    cid = contact(west, "Masked")
    shipped = load_policy(POLICIES.parents[1], mesh.schema)
    assert "telephone1" not in shipped.rule_for("contact", "us-east").columns
    apply_egress(west, shipped, mesh.schema, ["eu-north", "us-east"])
    token = west.execute("SELECT pg_current_snapshot()::text").fetchone()[0]
    info = mesh.schema.tables["contact"]
    west.execute("UPDATE contact SET telephone1 = '1', medical_notes = 'x', "
                 "implant_serial = 'y' WHERE contactid = %s", (cid,))
    west.execute("UPDATE contact SET medical_notes = 'only' WHERE contactid = %s", (cid,))
    west.execute("UPDATE contact SET firstname = 'F', medical_notes = 'z' WHERE contactid = %s",
                 (cid,))

    def masks(destination: str) -> list[int]:
        with psycopg.connect(as_destination(mesh, "eu-west", destination)) as conn:
            return [m for (m,) in conn.execute(
                "SELECT cols FROM sync.egress_changes(%s, NULL, NULL, false) "
                "WHERE tablename = 'contact' ORDER BY id", (token,))]

    # eu-north is sent the phone, us-east is not: that update is no news to it at all
    assert masks("eu-north") == [info.bit("telephone1"), info.bit("firstname")]
    assert masks("us-east") == [info.bit("firstname")]
    with psycopg.connect(as_destination(mesh, "eu-west", "us-east")) as conn, \
            pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT cols FROM sync.change_set")


def test_an_owner_serving_protocol_3_is_read_whole(mesh: Mesh) -> None:
    """A region not yet migrated to 0023 serves protocol 3 (no masks): the receiver reads
    its updates whole, as before."""
    west = mesh.conn("eu-west")
    west.execute(SERVE.format(low=3, high=3, release="0.3.0.dev0"))
    cid = contact(west, "Older")
    mesh.pull("eu-north", "eu-west")
    link = mesh.link("eu-north", "eu-west")
    assert link.conns.session is not None and link.conns.session.protocol == 3
    seen = _seen(link)
    west.execute("UPDATE contact SET telephone1 = '3' WHERE contactid = %s", (cid,))
    mesh.pull("eu-north", "eu-west")
    assert [(s.narrow, s.columns) for s in seen] == [(False, _whole(mesh))]
    assert mesh.rows("eu-north", "contact") == mesh.rows("eu-west", "contact", "eu-north")


# The tree before migration 0023 (protocol 3), as a rolling upgrade meets it.
BEFORE_0023 = "ee2b16a8804c928ed44cfd521306efee581af830"

OLD_SIDE = """
import sys
import psycopg
from sync.db.catalog import introspect
from sync.db.migrate import migrate
from sync.link import LinkSettings, PeerLink
from sync.policy import load_policy
from sync.source.egress import apply_egress
what, url, policies = sys.argv[1:4]
if what == "owner":         # migrate, one contact, a destination role for eu-north
    migrate(url, "ap-south", sys.argv[4])
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO contact (contactid, lastname, firstname) VALUES "
                     "('5a1d0000-0000-4000-8000-000000000023', 'Before0023', 'Jo')")
        apply_egress(conn, load_policy(policies, introspect(conn)), introspect(conn),
                     ["eu-north"])
elif what == "target":
    migrate(url, "eu-north", sys.argv[4])
else:                       # receive: one batch from ap-south as the old release reads it
    owner = sys.argv[4]
    with psycopg.connect(url) as conn:
        policy = load_policy(policies, introspect(conn))
    link = PeerLink(LinkSettings(region="eu-north", peer="ap-south", peer_conninfo=owner,
                                 local_conninfo=url), policy=lambda: policy)
    try:
        link.run_once()
        print(link.conns.open().protocol)
    finally:
        link.close()
"""


def _old(tree: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", OLD_SIDE, *args], cwd=tree,
                          env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def test_a_region_migrated_to_0023_in_place_serves_old_and_new_receivers(
        mesh: Mesh, pg_clusters: dict[str, LocalCluster], tmp_path: Path) -> None:
    """A region at 0022, made by that tree's own code, with a destination role, takes 0023
    in place while the mesh runs: the function its destinations read the journal through
    is made again with its grants; this release's receiver reads its updates narrow
    (protocol 4), and a receiver still on the tree before goes on at protocol 3."""
    tree = release_tree(BEFORE_0023, tmp_path / "before-0023")
    policies = str(tree / "policies" / "examples" / "shared-mesh")
    owner_cluster, old_cluster = pg_clusters["ap-south"], pg_clusters["eu-north"]
    url = owner_cluster.create_database(f"o{uuid.uuid4().hex[:8]}")
    old_target = old_cluster.create_database(f"r{uuid.uuid4().hex[:8]}")
    kind = "plpgsql" if CAPTURE == "plpgsql" else "auto"
    try:
        _old(tree, "owner", url, policies, kind)
        _old(tree, "target", old_target, policies, kind)
        with psycopg.connect(url) as conn:
            assert served(conn).high == 3
        as_north = make_conninfo(url, user=role_for("eu-north"))
        assert _old(tree, "receive", old_target, policies, as_north) == "3"   # initial load

        migrate(url, "ap-south", kind)
        link = new_link(region="eu-north", peer="ap-south", peer_conninfo=as_north,
                        local_conninfo=mesh.urls["eu-north"], policy=lambda: mesh.policy)
        try:
            link.run_once()                                  # the initial load
            assert link.conns.session is not None and link.conns.session.protocol == 4
            seen = _seen(link)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("UPDATE contact SET telephone1 = '0023' WHERE lastname = "
                             "'Before0023'")
                owner = synced_rows(conn, mesh.schema, mesh.policy, "contact", "eu-north")
            link.run_once()
        finally:
            link.close()
        assert [s.narrow for s in seen] == [True]
        assert mesh.rows("eu-north", "contact") == owner
        assert _old(tree, "receive", old_target, policies, as_north) == "3"
        with psycopg.connect(old_target) as conn:
            assert conn.execute("SELECT telephone1 FROM contact WHERE lastname = "
                                "'Before0023'").fetchone() == ("0023",)
    finally:
        owner_cluster.drop_database(conninfo_to_dict(url)["dbname"])
        old_cluster.drop_database(conninfo_to_dict(old_target)["dbname"])
