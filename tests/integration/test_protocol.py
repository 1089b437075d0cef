"""The wire protocol handshake: before its first batch a receiver asks the owner which
protocol versions it serves; ranges that overlap sync at the highest common version, and
ranges that do not stop that link alone, in one line naming both sides and what to
upgrade first. Tried against the previous release itself, taken from the project's history
(tag v0.1.0) and migrated by its own code."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from sync import __version__
from sync.protocol import RELEASE, SPEAKS, Served
from sync.testing.cluster import LocalCluster
from tests.fix_pg import Mesh, new_link
from tests.integration.helpers import contact, release_tree

ROOT = Path(__file__).resolve().parents[2]
PREVIOUS = "v0.1.0"

SERVE = """CREATE OR REPLACE FUNCTION sync.protocol_versions(OUT min_version integer,
    OUT max_version integer, OUT release text, OUT region text)
LANGUAGE sql STABLE AS $$ SELECT {low}, {high}, '{release}', 'eu-west'::text $$"""


def _link(mesh: Mesh, target: str = "eu-north", source: str = "eu-west"):
    return new_link(region=target, peer=source, peer_conninfo=mesh.urls[source],
                    local_conninfo=mesh.urls[target], policy=lambda: mesh.policy)


def test_the_release_and_the_database_say_the_same_versions(mesh: Mesh) -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{__version__}"' in pyproject
    row = mesh.conn("eu-west").execute("SELECT * FROM sync.protocol_versions()").fetchone()
    assert row == (*SPEAKS, RELEASE, "eu-west")


def test_an_overlapping_range_syncs_and_one_that_does_not_stops_that_link(mesh: Mesh) -> None:
    west = mesh.conn("eu-west")
    cid = contact(west, "Skew")
    # an owner one release ahead that still serves ours: supported skew, it syncs
    west.execute(SERVE.format(low=SPEAKS[1], high=SPEAKS[1] + 1, release="0.3.0"))
    link = _link(mesh)
    try:
        link.run_once()
        assert link.conns.session is not None and link.conns.session.protocol == SPEAKS[1]
    finally:
        link.close()
    assert mesh.one("eu-north", "SELECT count(*) FROM contact WHERE contactid = %s",
                    (cid,)) == 1
    # two releases ahead, ours dropped: that link stops, naming both and what to upgrade
    west.execute(SERVE.format(low=SPEAKS[1] + 1, high=SPEAKS[1] + 2, release="0.4.0"))
    contact(west, "Unseen")
    assert mesh.refusal("eu-north", "eu-west") == (
        f"peer eu-west: eu-west serves protocol {SPEAKS[1] + 1}-{SPEAKS[1] + 2} (regionsync "
        f"0.4.0) and eu-north reads {Served(*SPEAKS, RELEASE).describe()}: upgrade "
        f"eu-north's regionsync (this daemon) to a release that speaks protocol "
        f"{SPEAKS[1] + 1}")
    assert mesh.one("eu-north", "SELECT count(*) FROM contact WHERE lastname = 'Unseen'") == 0
    # the other links of eu-north are untouched
    other = contact(mesh.conn("us-east"), "Elsewhere")
    mesh.pull("eu-north", "us-east")
    assert mesh.one("eu-north", "SELECT count(*) FROM contact WHERE contactid = %s",
                    (other,)) == 1


def test_a_peer_url_that_reaches_another_region_stops_that_link(mesh: Mesh) -> None:
    assert mesh.refusal("eu-north", "us-east", mesh.urls["eu-west"]) == (
        "peer us-east: the URL for peer us-east reaches region eu-west's database; "
        "fix peers[us-east].url")


@pytest.fixture
def previous_owner(pg_clusters: dict[str, LocalCluster], tmp_path: Path) -> Iterator[str]:
    """A database migrated by the previous release's own `migrate`, with one contact."""
    tree = release_tree(PREVIOUS, tmp_path / "previous")
    cluster = pg_clusters["ap-south"]
    name = f"prev{uuid.uuid4().hex[:6]}"
    url = cluster.create_database(name)
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from sync.db.migrate import migrate; "
         "migrate(sys.argv[1], 'ap-south', 'plpgsql'); import sync; print(sync.__file__)", url],
        cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tree / "sync" / "__init__.py")   # its code, not ours
    with psycopg.connect(url, autocommit=True) as conn:
        contact(conn, "FromThePast")
    yield url
    cluster.drop_database(name)


def test_a_receiver_of_this_release_against_an_owner_of_the_previous(
        mesh: Mesh, previous_owner: str) -> None:
    with psycopg.connect(previous_owner) as conn:
        assert conn.execute("SELECT to_regproc('sync.protocol_versions')").fetchone() == (None,)
    assert mesh.refusal("eu-north", "ap-south", previous_owner) == (
        f"peer ap-south: ap-south serves protocol 1 (regionsync 0.1.0) and eu-north reads "
        f"{Served(*SPEAKS, RELEASE).describe()}: upgrade ap-south's database first "
        f"(`regionsync migrate` there with regionsync {RELEASE} or later), then its daemon")
    assert mesh.one("eu-north", "SELECT count(*) FROM contact") == 0
    # upgraded in place by this release's migrate, the same link syncs what it holds
    from sync.db.migrate import migrate
    migrate(previous_owner, "ap-south", "plpgsql")
    link = new_link(region="eu-north", peer="ap-south", peer_conninfo=previous_owner,
                    local_conninfo=mesh.urls["eu-north"], policy=lambda: mesh.policy)
    try:
        link.run_once()
    finally:
        link.close()
    assert mesh.one("eu-north", "SELECT lastname FROM contact") == "FromThePast"
