"""Upgrade in place to per-column versions (migration 0018), on both capture paths: a
region migrated by the previous schema (0017) with rows, edits and tombstones moves to
head with every row's columns at its current row version, and a link whose peer is still
before 0018 stops alone with one line naming both sides."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from alembic import command
from sync import versions
from sync.capture.install import use_capture
from sync.db.migrate import alembic_dir, migrate
from sync.errors import ConfigError
from sync.protocol import RELEASE, SPEAKS, Served
from sync.testing.cluster import LocalCluster
from tests.fix_pg import Mesh
from tests.integration.helpers import contact

_n = itertools.count(1)


def _at_0017(cluster: LocalCluster, region: str, kind: str) -> str:
    """A database as the previous release's `migrate` leaves it."""
    url = cluster.create_database(f"old{next(_n)}")
    cfg = Config()
    cfg.set_main_option("script_location", str(alembic_dir()))
    engine = create_engine("postgresql+psycopg://", poolclass=NullPool,
                           creator=lambda: psycopg.connect(url))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0017")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO sync.settings (region) VALUES (:r)"), {"r": region})
        use_capture(conn, kind)
        conn.execute(text("SELECT sync.enable_change_tracking(tablename) FROM sync.tracked_table"))
    engine.dispose()
    return url


@pytest.fixture
def old_db(pg_clusters: dict[str, LocalCluster], request: pytest.FixtureRequest
           ) -> Iterator[tuple[str, str]]:
    kind = request.param
    cluster = pg_clusters["ap-south"]
    try:
        url = _at_0017(cluster, "ap-south", kind)
    except ConfigError as exc:
        pytest.skip(f"the C capture extension is not installed here: {exc}")
    yield url, kind
    cluster.drop_database(psycopg.conninfo.conninfo_to_dict(url)["dbname"])


@pytest.mark.parametrize("old_db", ["c", "plpgsql"], indirect=True)
def test_a_region_migrates_in_place_and_merges_per_column(old_db: tuple[str, str]) -> None:
    url, kind = old_db
    with psycopg.connect(url, autocommit=True) as conn:
        kept, edited, gone = (contact(conn, n) for n in ("Kept", "Edited", "Gone"))
        conn.execute("UPDATE contact SET telephone1 = '1' WHERE contactid = %s", (edited,))
        conn.execute("DELETE FROM contact WHERE contactid = %s", (gone,))
        rows = conn.execute("SELECT contactid, modifiedon, sync_origin, versionnumber "
                            "FROM contact ORDER BY contactid").fetchall()
    migrate(url, "ap-south", kind)
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT sync.capture_kind()").fetchone() == (kind,)
        # every row's columns are at its current row version; nothing was journaled or
        # re-versioned by the upgrade
        assert conn.execute(
            "SELECT contactid, modifiedon, sync_origin, versionnumber FROM contact "
            "ORDER BY contactid").fetchall() == rows
        assert conn.execute(
            "SELECT count(*) FROM contact WHERE sync_base <> sync.version_of(modifiedon, "
            "sync.local_origin()) OR telephone1__v IS NOT NULL OR lastname__v IS NOT NULL"
        ).fetchone() == (0,)
        journal = conn.execute("SELECT count(*) FROM sync.change_set").fetchone()[0]
        # the capture triggers stamp per column from now on
        conn.execute("UPDATE contact SET telephone1 = '2' WHERE contactid = %s", (kept,))
        v, base, mask = conn.execute(
            "SELECT telephone1__v, sync_base, sync_changed FROM contact WHERE contactid = %s",
            (kept,)).fetchone()
        assert v & versions.MAX_ORIGIN == versions.default_number("ap-south")
        assert v > base and conn.execute(
            "SELECT lastname__v FROM contact WHERE contactid = %s", (kept,)).fetchone() == (None,)
        bit = conn.execute("SELECT 1::bigint << (attnum - 1) FROM pg_attribute WHERE attrelid "
                           "= 'contact'::regclass AND attname = 'telephone1'").fetchone()[0]
        assert mask == bit
        assert conn.execute("SELECT cols FROM sync.change_set ORDER BY id DESC LIMIT 1"
                            ).fetchone() == (bit,)
        assert conn.execute("SELECT count(*) FROM sync.change_set").fetchone()[0] == journal + 1
        assert conn.execute("SELECT count(*) FROM sync.tombstone WHERE pk = %s",
                            (gone,)).fetchone() == (1,)


@pytest.mark.parametrize("old_db", ["plpgsql"], indirect=True)
def test_a_link_to_a_peer_before_0018_stops_alone_naming_both(mesh: Mesh,
                                                             old_db: tuple[str, str]) -> None:
    url, _ = old_db
    with psycopg.connect(url, autocommit=True) as conn:
        contact(conn, "Old")
    assert mesh.refusal("eu-north", "ap-south", url) == (
        "peer ap-south: ap-south serves protocol 1 (regionsync 0.1.0) and eu-north reads "
        f"{Served(*SPEAKS, RELEASE).describe()}: upgrade ap-south's database first "
        f"(`regionsync migrate` there with regionsync {RELEASE} or later), then its daemon")
    assert mesh.one("eu-north", "SELECT count(*) FROM contact") == 0
    # the other links are untouched
    cid = contact(mesh.conn("eu-west"), "New")
    mesh.pull("eu-north", "eu-west")
    assert mesh.one("eu-north", "SELECT count(*) FROM contact WHERE contactid = %s",
                    (uuid.UUID(str(cid)),)) == 1
