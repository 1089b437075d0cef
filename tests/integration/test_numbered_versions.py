"""Column versions as numbers (migration 0021, protocol 3), tried on real databases: a
region with text versions (0020, the previous release) migrates in place on both capture
paths with every version keeping its time and origin; two origin names on one number are
refused with one line and the database stays as it was; a peer that numbers a region
differently stops only its link; a destination role reads no version it is not sent."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from sync import versions
from sync.db.migrate import migrate
from sync.errors import ConfigError
from sync.policy import load_policy
from sync.protocol import RELEASE as RELEASE_NOW
from sync.source.egress import apply_egress
from sync.testing.cluster import LocalCluster
from tests.fix_daemons import write_config
from tests.fix_pg import POLICIES, Mesh
from tests.integration.helpers import cli, contact, release_tree
from tests.integration.test_residency import as_destination

_n = itertools.count(1)
# two region names whose default numbers collide (CRC-32 modulo 2047)
TWINS = ("r12", "r22")
VERSION_COLUMNS = ("sync_base", "lastname__v", "telephone1__v", "emailaddress1__v")


RELEASE = "v0.2.0"        # the previous release: protocol 2, text versions
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def previous_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The previous release's tree: its own migrations and functions make the database an
    upgrade starts from (the tree at head cannot: its server-side files hold today's text)."""
    return release_tree(RELEASE, tmp_path_factory.mktemp(RELEASE))


def _migrated_by(tree: Path, url: str, region: str, kind: str) -> None:
    """``regionsync migrate`` as the release in ``tree`` runs it, in its own process."""
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from sync.db.migrate import migrate; "
         "migrate(sys.argv[1], sys.argv[2], sys.argv[3])", url, region, kind],
        cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True)
    if done.returncode != 0:
        raise ConfigError(done.stderr.strip().splitlines()[-1])


@pytest.fixture
def v2_db(pg_clusters: dict[str, LocalCluster], previous_release: Path,
          request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    kind = request.param
    cluster = pg_clusters["ap-south"]
    url = cluster.create_database(f"v2db{next(_n)}")
    try:
        _migrated_by(previous_release, url, "ap-south", kind)
    except ConfigError as exc:
        if kind == "c":
            pytest.skip(f"the C capture extension is not installed here: {exc}")
        raise
    yield url, kind
    cluster.drop_database(psycopg.conninfo.conninfo_to_dict(url)["dbname"])


def _foreign_edit(conn: psycopg.Connection, key: object, column: str, version: str) -> None:
    """A version another region wrote, as apply would have left it (text, protocol 2)."""
    with conn.transaction():
        conn.execute("ALTER TABLE contact DISABLE TRIGGER USER")
        conn.execute(f"UPDATE contact SET {column} = 'theirs', {column}__v = %s "
                     "WHERE contactid = %s", (version, key))
        conn.execute("ALTER TABLE contact ENABLE TRIGGER USER")


def _versions(conn: psycopg.Connection, describe: bool) -> list[tuple]:
    cols = ", ".join(f"sync.describe_version({c})" if describe else c for c in VERSION_COLUMNS)
    return conn.execute(f"SELECT contactid, {cols} FROM contact ORDER BY contactid").fetchall()


@pytest.mark.parametrize("v2_db", ["c", "plpgsql"], indirect=True)
def test_text_versions_become_numbers_in_place(v2_db: tuple[str, str]) -> None:
    url, kind = v2_db
    with psycopg.connect(url, autocommit=True) as conn:
        kept, edited, theirs = (contact(conn, n) for n in ("Kept", "Edited", "Theirs"))
        conn.execute("UPDATE contact SET telephone1 = '1' WHERE contactid = %s", (edited,))
        _foreign_edit(conn, theirs, "lastname", "2026-12-01T08:00:00.000001Z eu-north")
        before = _versions(conn, describe=False)
        rows = conn.execute("SELECT contactid, lastname, telephone1, modifiedon, sync_origin, "
                            "versionnumber FROM contact ORDER BY contactid").fetchall()
        journal = conn.execute("SELECT count(*) FROM sync.change_set").fetchone()[0]
    assert any(v is not None and v.endswith(" eu-north") for row in before for v in row[1:])
    migrate(url, "ap-south", kind)
    with psycopg.connect(url, autocommit=True) as conn:
        types = dict(conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid "
            "= 'contact'::regclass AND (attname ~ '__v$' OR attname = 'sync_base')").fetchall())
        assert set(types.values()) == {"bigint"}, types
        # the same time, to the microsecond, and the same origin: no merge decides otherwise
        assert _versions(conn, describe=True) == before
        assert conn.execute("SELECT contactid, lastname, telephone1, modifiedon, sync_origin, "
                            "versionnumber FROM contact ORDER BY contactid").fetchall() == rows
        assert conn.execute("SELECT count(*) FROM sync.change_set").fetchone()[0] == journal
        assert dict(conn.execute("SELECT region, number FROM sync.origin").fetchall()) == {
            "ap-south": versions.default_number("ap-south"),
            "eu-north": versions.default_number("eu-north")}
        assert conn.execute("SELECT sync.capture_kind()").fetchone() == (kind,)
        # the triggers stamp numbers from now on: this region's, newer than any before
        conn.execute("UPDATE contact SET emailaddress1 = 'k@x' WHERE contactid = %s", (kept,))
        v, base = conn.execute("SELECT emailaddress1__v, sync_base FROM contact "
                               "WHERE contactid = %s", (kept,)).fetchone()
        assert v & versions.MAX_ORIGIN == versions.default_number("ap-south") and v > base
        assert conn.execute("SELECT lastname__v FROM contact WHERE contactid = %s",
                            (kept,)).fetchone() == (None,)
        # a local insert's base is its own row version, as a number
        key = contact(conn, "After")
        base, stamped = conn.execute(
            "SELECT sync_base, sync.version_of(modifiedon, %s) FROM contact "
            "WHERE contactid = %s", (versions.default_number("ap-south"), key)).fetchone()
        assert base == stamped


@pytest.mark.parametrize("v2_db", ["plpgsql"], indirect=True)
def test_two_origins_on_one_number_are_refused_until_numbered(v2_db: tuple[str, str]) -> None:
    url, kind = v2_db
    with psycopg.connect(url, autocommit=True) as conn:
        a, b = contact(conn, "A"), contact(conn, "B")
        _foreign_edit(conn, a, "lastname", f"2026-12-01T08:00:00.000001Z {TWINS[0]}")
        _foreign_edit(conn, b, "lastname", f"2026-12-01T08:00:00.000002Z {TWINS[1]}")
        before = _versions(conn, describe=False)
    with pytest.raises(ConfigError) as err:
        migrate(url, "ap-south", kind)
    number = versions.default_number(TWINS[0])
    assert str(err.value) == (
        f"origin_numbers: regions {TWINS[0]} and {TWINS[1]} would share origin number "
        f"{number}; give one of them another number (1-2047) in origin_numbers, in every "
        "region's config, and migrate again")
    with psycopg.connect(url, autocommit=True) as conn:
        # nothing changed: still the previous release's schema and text versions
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == ("0020",)
        assert _versions(conn, describe=False) == before
    migrate(url, "ap-south", kind, origin_numbers={TWINS[1]: 7})
    with psycopg.connect(url, autocommit=True) as conn:
        assert _versions(conn, describe=True) == before
        assert conn.execute("SELECT lastname__v & 2047 FROM contact WHERE contactid = %s",
                            (b,)).fetchone() == (7,)
    # the config cannot renumber a region once versions carry its number
    with pytest.raises(ConfigError) as err:
        migrate(url, "ap-south", kind, origin_numbers={TWINS[1]: 8})
    assert str(err.value).startswith(f"origin_numbers: region {TWINS[1]} is number 7 in this "
                                     "database") or "is number 8 there and number 7 here" in \
        str(err.value), str(err.value)


def test_a_peer_that_numbers_a_region_otherwise_stops_alone(mesh: Mesh) -> None:
    """eu-west met region zz as 5, eu-north as 6: eu-north's link from eu-west stops,
    naming both, before any version of either crosses; its other links run."""
    mesh.conn("eu-west").execute("INSERT INTO sync.origin VALUES (5, 'zz')")
    mesh.conn("eu-north").execute("INSERT INTO sync.origin VALUES (6, 'zz')")
    contact(mesh.conn("eu-west"), "West")
    assert mesh.refusal("eu-north", "eu-west") == (
        "peer eu-west: eu-west and eu-north number origins differently: region zz is number 5 "
        "there and number 6 here; give every region of the mesh the same origin_numbers "
        "(docs/operations.md, \"Origin numbers\")")
    assert mesh.one("eu-north", "SELECT count(*) FROM contact") == 0
    north = contact(mesh.conn("us-east"), "East")
    mesh.pull("eu-north", "us-east")
    assert mesh.one("eu-north", "SELECT count(*) FROM contact WHERE contactid = %s",
                    (north,)) == 1
    # and what a link learns, its database keeps: us-east's number for itself
    assert mesh.one("eu-north", "SELECT number FROM sync.origin WHERE region = 'us-east'") \
        == versions.default_number("us-east")


def test_a_destination_reads_the_registry_through_the_handshake_only(mesh: Mesh) -> None:
    """eu-north's role at eu-west reads the numbers through ``sync.origin_numbers()``
    (region names its config holds anyway) and the versions of the columns it is sent as
    numbers; the medical column's version stays unreadable (test_column_merge)."""
    west = mesh.conn("eu-west")
    apply_egress(west, load_policy(POLICIES, mesh.schema), mesh.schema, ["eu-north"])
    contact(west, "West")
    with psycopg.connect(as_destination(mesh, "eu-west", "eu-north"), autocommit=True) as dest:
        assert dest.execute("SELECT number, region FROM sync.origin_numbers()").fetchall() == [
            (versions.default_number("eu-west"), "eu-west")]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            dest.execute("SELECT * FROM sync.origin")
        [(v,)] = dest.execute("SELECT telephone1__v IS NULL AND sync_base & 2047 = %s "
                              "FROM contact", (versions.default_number("eu-west"),)).fetchall()
        assert v is True
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            dest.execute("SELECT medical_notes__v FROM contact")


OLD_RECEIVER = """
import sys
from sync.db.catalog import introspect
from sync.db.connect import connect
from sync.errors import PeerFatal
from sync.link import LinkSettings, PeerLink
from sync.policy import load_policy
target, owner, policies = sys.argv[1:4]
with connect(target, application_name="old-receiver") as conn:
    policy = load_policy(policies, introspect(conn))
link = PeerLink(LinkSettings(region="ap-south", peer="eu-west", peer_conninfo=owner,
                             local_conninfo=target), policy=lambda: policy)
try:
    link.run_once()
    print("no refusal")
except PeerFatal as exc:
    print(exc)
finally:
    link.close()
"""


@pytest.mark.parametrize("v2_db", ["plpgsql"], indirect=True)
def test_a_previous_release_reading_a_migrated_owner_stops_naming_both(
        mesh: Mesh, v2_db: tuple[str, str], previous_release: Path) -> None:
    """The mixed mesh of a rolling upgrade: ap-south still runs 0.2.0 (its database and its
    receiver, v0.2.0's own code) and reads eu-west, migrated. Its link stops with one line
    naming both releases and what to upgrade, and takes nothing; and this release's
    receiver stops alike on ap-south's old database."""
    url, _ = v2_db
    contact(mesh.conn("eu-west"), "West")
    done = subprocess.run(
        [sys.executable, "-c", OLD_RECEIVER, url, mesh.urls["eu-west"],
         str(previous_release / "policies" / "examples" / "shared-mesh")],
        cwd=previous_release, env={**os.environ, "PYTHONPATH": str(previous_release)},
        capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1:] == [(
        f"peer eu-west: eu-west serves protocol 3-4 (regionsync {RELEASE_NOW}) and ap-south "
        "reads protocol 2 (regionsync 0.2.0): upgrade ap-south's regionsync (this daemon) to "
        "a release that speaks protocol 3")], done.stderr[-2000:]
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM contact").fetchone() == (0,)
    assert mesh.refusal("eu-north", "ap-south", url) == (
        f"peer ap-south: ap-south serves protocol 2 (regionsync 0.2.0) and eu-north reads "
        f"protocol 3-4 (regionsync {RELEASE_NOW}): upgrade ap-south's database first "
        f"(`regionsync migrate` there with regionsync {RELEASE_NOW} or later), then its daemon")


def test_peers_add_refuses_a_peer_that_numbers_a_region_otherwise(mesh: Mesh,
                                                                  tmp_path: Path) -> None:
    mesh.conn("eu-west").execute("INSERT INTO sync.origin VALUES (5, 'zz')")
    mesh.conn("eu-north").execute("INSERT INTO sync.origin VALUES (6, 'zz')")
    config = write_config(tmp_path / "eu-west.yaml", "eu-west", mesh.urls["eu-west"], {})
    before = config.read_text()
    added = cli("peers", "add", "eu-north", "--config", str(config),
                "--url", mesh.urls["eu-north"])
    assert added.returncode != 0
    assert added.stderr.strip().splitlines()[-1] == (
        "regionsync: origin_numbers: eu-north and eu-west number origins differently: region "
        "zz is number 6 there and number 5 here; give every region the same origin_numbers "
        "before NAME's first write")
    assert config.read_text() == before


def test_a_link_learns_numbers_its_owner_met_after_the_handshake(mesh: Mesh) -> None:
    """A hub that hears from a new spoke numbers it before it holds any of its versions;
    a spoke whose session with the hub is already open learns the number in the snapshot
    of the batch that could carry such a version, not at its next handshake."""
    contact(mesh.conn("eu-north"), "First")
    mesh.pull("us-east", "eu-north")                      # the session is open now
    session = mesh.link("us-east", "eu-north").conns.session
    assert session is not None
    mesh.conn("eu-north").execute("INSERT INTO sync.origin VALUES (9, 'ap-east')")
    contact(mesh.conn("eu-north"), "Second")
    mesh.pull("us-east", "eu-north")
    assert mesh.link("us-east", "eu-north").conns.session is session     # same session
    assert mesh.one("us-east", "SELECT region FROM sync.origin WHERE number = 9") == "ap-east"
    assert session.names[9] == "ap-east"
