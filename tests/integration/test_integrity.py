"""Only regionsync's apply can write a foreign version (invariant 7).

An application role — DML on the business tables and nothing else — tries every forgery
that worked before migration 0007; each is refused or has no effect, read back here and,
after a sync, everywhere.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import psycopg.conninfo
import pytest

from tests.fix_pg import Mesh
from tests.integration.helpers import application_role, contact

FUTURE = datetime(2099, 1, 1, tzinfo=UTC)


@pytest.fixture
def app(mesh: Mesh) -> Iterator[psycopg.Connection]:
    """eu-west's application: a login role with DML on the business tables only."""
    with application_role(mesh.urls["eu-west"], mesh.conn("eu-west")) as conn:
        yield conn


def _row(mesh: Mesh, region: str, key: uuid.UUID) -> tuple | None:
    return mesh.conn(region).execute(
        "SELECT lastname, modifiedon, sync_origin FROM contact WHERE contactid = %s",
        (key,)).fetchone()


def test_settings_cannot_forge_origin_or_time(mesh: Mesh, app: psycopg.Connection) -> None:
    key = contact(mesh.conn("eu-west"), "Honest")
    mesh.sync()
    with app.transaction():
        app.execute("SELECT set_config('regionsync.origin', 'eu-north', true), "
                    "set_config('regionsync.stamped', 'on', true), "
                    "set_config('regionsync.region_cache', 'us-east', true)")
        app.execute("UPDATE contact SET lastname = 'Forged', modifiedon = %s, "
                    "sync_origin = 'eu-north' WHERE contactid = %s", (FUTURE, key))
    lastname, modifiedon, origin = _row(mesh, "eu-west", key)
    assert (lastname, origin) == ("Forged", "eu-west") and modifiedon < FUTURE
    mesh.sync()
    for region in ("eu-north", "us-east"):   # the edit is local, so it synced
        assert _row(mesh, region, key) == (lastname, modifiedon, "eu-west")


def test_an_insert_cannot_choose_its_origin_or_time(mesh: Mesh,
                                                    app: psycopg.Connection) -> None:
    key = uuid.uuid4()
    with app.transaction():
        app.execute("SELECT set_config('regionsync.origin', 'eu-north', true)")
        app.execute("INSERT INTO contact (contactid, lastname, modifiedon, sync_origin) "
                    "VALUES (%s, 'Sneaky', %s, 'eu-north')", (key, FUTURE))
    _, modifiedon, origin = _row(mesh, "eu-west", key)
    assert origin == "eu-west" and modifiedon < FUTURE
    mesh.sync()
    assert _row(mesh, "us-east", key)[2] == "eu-west"


def test_a_delete_cannot_skip_its_tombstone_or_journal(mesh: Mesh,
                                                       app: psycopg.Connection) -> None:
    key = contact(mesh.conn("eu-west"), "Gone")
    mesh.sync()
    with app.transaction():
        app.execute("SELECT set_config('regionsync.journal', 'off', true), "
                    "set_config('regionsync.origin', 'eu-north', true)")
        app.execute("DELETE FROM contact WHERE contactid = %s", (key,))
    assert mesh.one("eu-west", "SELECT origin FROM sync.tombstone WHERE pk = %s",
                    (key,)) == "eu-west"
    mesh.sync()
    assert _row(mesh, "eu-north", key) is None and _row(mesh, "us-east", key) is None


@pytest.mark.parametrize("statement", [
    "INSERT INTO sync.tombstone VALUES ('contact', gen_random_uuid(), '2099-01-01', 'eu-west')",
    "INSERT INTO sync.change_set (tablename, op, origin, pks, versions) "
    "VALUES ('contact', 'd', 'eu-west', '{}', '{}')",
    "UPDATE sync.peer_state SET token = '1:1:'",
    "SELECT * FROM sync.change_set",
    "SELECT sync.enable_change_tracking('contact')",
    "ALTER TABLE contact DISABLE TRIGGER regionsync_capture_update",
    "SET session_replication_role = replica",
])
def test_the_application_has_no_way_into_the_sync_schema(app: psycopg.Connection,
                                                         statement: str) -> None:
    with pytest.raises((psycopg.errors.InsufficientPrivilege,
                        psycopg.errors.UndefinedFunction)):
        app.execute(statement)


def test_the_application_writes_normally(mesh: Mesh, app: psycopg.Connection) -> None:
    """Capture itself needs nothing of the application: insert, COPY, update, delete."""
    key = uuid.uuid4()
    app.execute("INSERT INTO contact (contactid, lastname) VALUES (%s, 'App')", (key,))
    with app.cursor().copy("COPY contact (lastname) FROM STDIN") as copy:
        copy.write_row(("Copied",))
    app.execute("UPDATE contact SET firstname = 'Ann' WHERE contactid = %s", (key,))
    mesh.sync()
    assert _row(mesh, "us-east", key)[0] == "App"
    assert mesh.one("us-east", "SELECT count(*) FROM contact WHERE lastname = 'Copied'") == 1
    app.execute("DELETE FROM contact WHERE contactid = %s", (key,))
    mesh.sync()
    assert _row(mesh, "us-east", key) is None
