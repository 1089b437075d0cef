"""Local writes never take a version older than one the region already holds (a hybrid
logical clock), and TRUNCATE — which no trigger can capture key by key — is refused."""

from __future__ import annotations

import uuid
from datetime import timedelta

import psycopg
import pytest

from sync import versions
from tests.fix_pg import Mesh
from tests.integration.helpers import contact

AHEAD = timedelta(hours=1)


def _write_from_a_clock_ahead(mesh: Mesh, key: uuid.UUID, *, delete: bool = False) -> None:
    """eu-north authors ``key`` (or deletes it) with a clock an hour ahead of everyone's."""
    conn = mesh.conn("eu-north")
    with conn.transaction():
        # the stand-in for a skewed server clock: system columns written by hand, journaled
        # as the capture trigger would have
        conn.execute("SET LOCAL session_replication_role = replica")
        if delete:
            conn.execute("DELETE FROM contact WHERE contactid = %s", (key,))
            conn.execute("INSERT INTO sync.tombstone (tablename, pk, modifiedon, origin) "
                         "VALUES ('contact', %s, clock_timestamp() + %s, 'eu-north')",
                         (key, AHEAD))
            conn.execute("INSERT INTO sync.change_set (tablename, op, origin, pks, versions) "
                         "VALUES ('contact', 'd', 'eu-north', ARRAY[%s::uuid], "
                         "ARRAY[nextval('public.regionsync_versionnumber_seq')])", (key,))
        else:
            conn.execute("""INSERT INTO contact (contactid, lastname, modifiedon, sync_origin,
                                                 versionnumber, sync_base)
                            SELECT %s, 'Ahead', t, 'eu-north',
                                   nextval('public.regionsync_versionnumber_seq'),
                                   sync.version_of(t, %s)
                            FROM (SELECT clock_timestamp() + %s AS t) ahead""",
                         (key, versions.default_number("eu-north"), AHEAD))
            conn.execute("INSERT INTO sync.change_set (tablename, op, origin, pks, versions) "
                         "SELECT 'contact', 'i', 'eu-north', ARRAY[contactid], "
                         "ARRAY[versionnumber] FROM contact WHERE contactid = %s", (key,))


def _everywhere(mesh: Mesh, key: uuid.UUID) -> list[tuple]:
    mesh.sync()
    return [mesh.conn(r).execute("SELECT lastname, modifiedon, sync_origin FROM contact "
                                 "WHERE contactid = %s", (key,)).fetchone()
            for r in ("eu-west", "eu-north", "us-east")]


def test_a_local_update_after_a_version_from_a_clock_ahead_still_wins(mesh: Mesh) -> None:
    key = uuid.uuid4()
    _write_from_a_clock_ahead(mesh, key)
    mesh.sync()
    mesh.conn("eu-west").execute("UPDATE contact SET lastname = 'Edited' WHERE contactid = %s",
                                 (key,))
    rows = _everywhere(mesh, key)
    assert {r[0] for r in rows} == {"Edited"} and {r[2] for r in rows} == {"eu-west"}


def test_a_local_delete_after_a_version_from_a_clock_ahead_still_wins(mesh: Mesh) -> None:
    key = uuid.uuid4()
    _write_from_a_clock_ahead(mesh, key)
    mesh.sync()
    mesh.conn("eu-west").execute("DELETE FROM contact WHERE contactid = %s", (key,))
    assert _everywhere(mesh, key) == [None, None, None]


def test_a_reinsert_after_a_delete_from_a_clock_ahead_still_wins(mesh: Mesh) -> None:
    key = uuid.uuid4()
    contact(mesh.conn("eu-north"), "First", contactid=key)
    mesh.sync()
    _write_from_a_clock_ahead(mesh, key, delete=True)
    mesh.sync()
    contact(mesh.conn("eu-west"), "Again", contactid=key)
    rows = _everywhere(mesh, key)
    assert {r[0] for r in rows if r} == {"Again"} and None not in rows


def test_truncate_of_a_tracked_table_is_refused(mesh: Mesh) -> None:
    west = mesh.conn("eu-west")
    contact(west, "Kept")
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="TRUNCATE of tracked table"):
        west.execute("TRUNCATE contact CASCADE")
    assert mesh.one("eu-west", "SELECT count(*) FROM contact") == 1
