"""Both capture paths keep one contract: the C triggers (ext/regionsync_capture) and the
PL/pgSQL triggers they replace where the extension is not installed.

Every test runs on each path, switched the way an operator switches it (`migrate` with
``capture: c`` or ``capture: plpgsql``), writing as an ordinary application role (or as
apply, a regionsync_apply member) and reading back rows, versions, tombstones and the
journal. The whole suite runs on C when the extension is installed (``capture: auto``);
``REGIONSYNC_TEST_CAPTURE=plpgsql pytest`` runs all of it on the fallback.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import psycopg.conninfo
import pytest

from sync.db.migrate import migrate
from sync.errors import ConfigError
from tests.fix_pg import Mesh
from tests.integration.helpers import application_role, contact

FUTURE = datetime(2099, 1, 1, tzinfo=UTC)


@pytest.fixture(params=["c", "plpgsql"])
def kind(request: pytest.FixtureRequest, mesh: Mesh) -> str:
    try:
        migrate(mesh.urls["eu-west"], "eu-west", request.param)
    except ConfigError as exc:
        pytest.skip(f"the C capture extension is not installed here: {exc}")
    owner = mesh.conn("eu-west")
    assert owner.execute("SELECT sync.capture_kind()").fetchone() == (request.param,)
    functions = {r[0] for r in owner.execute(
        "SELECT p.proname FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
        "WHERE t.tgrelid = 'public.contact'::regclass AND t.tgname LIKE 'regionsync_capture%'")}
    c_functions = {"capture_before_update", "capture_after"}
    assert (functions == c_functions) == (request.param == "c"), functions
    return request.param


@pytest.fixture
def app(mesh: Mesh, kind: str) -> Iterator[psycopg.Connection]:
    """eu-west's application: a login role with DML on the business tables only."""
    with application_role(mesh.urls["eu-west"], mesh.conn("eu-west")) as conn:
        yield conn


def _journal(mesh: Mesh, since: int = 0) -> list[tuple[str, str, list[uuid.UUID], list[int]]]:
    return [(op, origin, list(pks), list(versions)) for op, origin, pks, versions in
            mesh.conn("eu-west").execute(
                "SELECT op, origin, pks, versions FROM sync.change_set "
                "WHERE tablename = 'contact' AND id > %s ORDER BY id", (since,))]


def _last_id(mesh: Mesh) -> int:
    return mesh.one("eu-west", "SELECT coalesce(max(id), 0) FROM sync.change_set")


def _row(mesh: Mesh, key: uuid.UUID) -> tuple:
    return mesh.conn("eu-west").execute(
        "SELECT versionnumber, modifiedon, sync_origin, createdon FROM contact "
        "WHERE contactid = %s", (key,)).fetchone()


def test_an_update_takes_a_version_its_time_and_this_region(
        mesh: Mesh, app: psycopg.Connection) -> None:
    keys = [contact(app, f"U{i}") for i in range(4)]
    before = {k: _row(mesh, k) for k in keys}
    mark = _last_id(mesh)
    # two of four rows change; the writer's own system columns are ignored
    app.execute("UPDATE contact SET firstname = CASE WHEN lastname IN ('U0', 'U1') "
                "THEN 'Changed' ELSE firstname END, sync_origin = 'us-east', "
                "modifiedon = %s, versionnumber = 1, createdon = %s WHERE contactid = ANY(%s)",
                (FUTURE, FUTURE, keys))
    after = {k: _row(mesh, k) for k in keys}
    for k in keys[:2]:
        version, modified, origin, created = after[k]
        assert version > before[k][0] and modified > before[k][1] and modified < FUTURE
        assert (origin, created) == ("eu-west", before[k][3])
    for k in keys[2:]:
        assert after[k] == before[k]          # a no-op update: nothing moves
    assert _journal(mesh, mark) == [("u", "eu-west", keys[:2], [after[k][0] for k in keys[:2]])]


def test_an_update_never_goes_back_in_time(mesh: Mesh, app: psycopg.Connection) -> None:
    key = contact(app, "Ahead")
    owner = mesh.conn("eu-west")
    with owner.transaction():   # a version from a peer whose clock runs an hour ahead
        owner.execute("SELECT set_config('regionsync.origin', 'eu-north', true)")
        owner.execute("UPDATE contact SET modifiedon = %s, sync_origin = 'eu-north', "
                      "firstname = 'Peer' WHERE contactid = %s",
                      (datetime.now(UTC) + timedelta(hours=1), key))
    peer_time = _row(mesh, key)[1]
    app.execute("UPDATE contact SET firstname = 'Local' WHERE contactid = %s", (key,))
    _, modified, origin, _ = _row(mesh, key)
    assert origin == "eu-west" and modified == peer_time + timedelta(microseconds=1)


def test_unchanged_large_and_equal_values_are_no_ops(mesh: Mesh,
                                                     app: psycopg.Connection) -> None:
    """Compared as `NEW IS NOT DISTINCT FROM OLD` does: a TOASTed value rewritten with the
    same bytes is unchanged, and so is a value of another spelling that its type calls
    equal."""
    key = contact(app, "Big", medical="x" * 200_000 + str(uuid.uuid4()))
    before = _row(mesh, key)
    mark = _last_id(mesh)
    app.execute("UPDATE contact SET medical_notes = medical_notes || '', "
                "lastname = 'Big'::varchar WHERE contactid = %s", (key,))
    assert _row(mesh, key) == before and _journal(mesh, mark) == []
    app.execute("UPDATE contact SET medical_notes = medical_notes || '!' WHERE contactid = %s",
                (key,))
    assert _row(mesh, key)[0] > before[0] and len(_journal(mesh, mark)) == 1


def test_a_forged_insert_is_stamped_as_a_local_write(mesh: Mesh,
                                                     app: psycopg.Connection) -> None:
    key = uuid.uuid4()
    mark = _last_id(mesh)
    app.execute("INSERT INTO contact (contactid, lastname, sync_origin, modifiedon, "
                "versionnumber) VALUES (%s, 'Forger', 'eu-north', %s, 9000000000000)",
                (key, FUTURE))
    version, modified, origin, _ = _row(mesh, key)
    assert origin == "eu-west" and modified < FUTURE and version < 9000000000000
    assert _journal(mesh, mark) == [("i", "eu-west", [key], [version])]



def _versions(mesh: Mesh, key: uuid.UUID, table: str = "contact") -> dict[str, int | None]:
    cur = mesh.conn("eu-west").execute(
        f"SELECT * FROM {table} WHERE {table}id = %s", (key,))
    row = cur.fetchone()
    assert cur.description is not None and row is not None
    return {d.name: v for d, v in zip(cur.description, row, strict=True)
            if d.name.endswith("__v") or d.name in ("sync_base", "sync_changed")}


def test_a_local_update_cannot_set_versions(mesh: Mesh, app: psycopg.Connection) -> None:
    """Versions are the trigger's: a writer that sets some along with a change has them
    reset (only the column it changed is stamped), and one that sets nothing but versions
    changes nothing at all."""
    key = contact(app, "Versions")
    before = _versions(mesh, key)
    mark = _last_id(mesh)
    app.execute("UPDATE contact SET firstname = 'Changed', telephone1__v = 9e15::bigint, "
                "lastname__v = NULL, sync_base = 1, sync_changed = 0 WHERE contactid = %s",
                (key,))
    after = _versions(mesh, key)
    row = mesh.one("eu-west", "SELECT sync.version_of(modifiedon, sync.local_origin()) "
                   "FROM contact WHERE contactid = %s", (key,))
    attnum = mesh.one("eu-west", "SELECT attnum FROM pg_attribute WHERE attrelid = "
                      "'public.contact'::regclass AND attname = 'firstname'")
    assert isinstance(attnum, int)
    bit = 1 << (attnum - 1)
    assert after == {**before, "firstname__v": row, "sync_changed": bit}
    assert [cols for (cols,) in mesh.conn("eu-west").execute(
        "SELECT cols FROM sync.change_set WHERE id > %s", (mark,))] == [bit]
    version = _row(mesh, key)
    mark = _last_id(mesh)
    app.execute("UPDATE contact SET telephone1__v = 9e15::bigint, sync_base = 1 "
                "WHERE contactid = %s", (key,))
    assert _versions(mesh, key) == after and _row(mesh, key) == version
    assert _journal(mesh, mark) == []


def test_a_table_of_more_than_64_columns_stamps_each_changed_column(
        mesh: Mesh, app: psycopg.Connection) -> None:
    """Columns past the 63rd share the mask's last bit (the journal cannot say which of
    them changed), but each is stamped only when its own value changed."""
    owner = mesh.conn("eu-west")
    data = ", ".join(f"c{i} text" for i in range(1, 71))
    owner.execute(f"CREATE TABLE public.wide (wideid uuid PRIMARY KEY, {data}, "
                  "createdon timestamptz NOT NULL DEFAULT now(), modifiedon timestamptz "
                  "NOT NULL DEFAULT now(), versionnumber bigint NOT NULL DEFAULT 0, "
                  "sync_origin text NOT NULL DEFAULT '')")
    try:
        owner.execute("SELECT sync.enable_change_tracking('wide')")
        owner.execute(f"GRANT SELECT, INSERT, UPDATE ON public.wide TO {app.info.user}")
        key = uuid.uuid4()
        app.execute("INSERT INTO wide (wideid, c2, c69, c70) VALUES (%s, 'a', 'b', 'c')",
                    (key,))
        before = _versions(mesh, key, "wide")
        app.execute("UPDATE wide SET c2 = 'A', c70 = 'C', c69 = 'b' WHERE wideid = %s", (key,))
        after = _versions(mesh, key, "wide")
        row = mesh.one("eu-west", "SELECT sync.version_of(modifiedon, sync.local_origin()) "
                       "FROM wide WHERE wideid = %s", (key,))
        # c2 is attnum 3 (bit 2); c70 is attnum 71, past 63: bit 63, bigint's sign bit
        assert after == {**before, "c2__v": row, "c70__v": row,
                         "sync_changed": (1 << 2) | -(1 << 63)}
    finally:
        owner.execute("DELETE FROM sync.tracked_table WHERE tablename = 'wide'")
        owner.execute("DROP TABLE public.wide")

@pytest.mark.parametrize("others", [0, 5], ids=["one-tombstone", "more-than-the-rows"])
def test_an_insert_goes_past_a_newer_tombstone(mesh: Mesh, app: psycopg.Connection,
                                               others: int) -> None:
    """A re-insert after a delete from a clock ahead of ours. With more future tombstones
    than inserted rows the C path probes each key instead of matching the newest ones."""
    owner = mesh.conn("eu-west")
    ahead = datetime.now(UTC) + timedelta(minutes=10)
    key, bystander = uuid.uuid4(), uuid.uuid4()
    for pk in [key, *(uuid.uuid4() for _ in range(others))]:
        owner.execute("INSERT INTO sync.tombstone (tablename, pk, modifiedon, origin) "
                      "VALUES ('contact', %s, %s, 'eu-north')", (pk, ahead))
    mark = _last_id(mesh)
    app.execute("INSERT INTO contact (contactid, lastname) VALUES (%s, 'Back')", (key,))
    version, modified, origin, _ = _row(mesh, key)
    assert origin == "eu-west" and modified > ahead
    app.execute("INSERT INTO contact (contactid, lastname) VALUES (%s, 'New')", (bystander,))
    b_version, b_modified, _, _ = _row(mesh, bystander)
    assert b_modified < ahead                  # untouched by tombstones of other keys
    assert _journal(mesh, mark) == [("i", "eu-west", [key], [version]),
                                    ("i", "eu-west", [bystander], [b_version])]


def test_a_local_delete_leaves_a_newer_tombstone_and_a_journal_entry(
        mesh: Mesh, app: psycopg.Connection) -> None:
    keys = [contact(app, f"D{i}", medical=None) for i in range(3)]
    modified = {k: _row(mesh, k)[1] for k in keys}
    mark = _last_id(mesh)
    app.execute("DELETE FROM contact WHERE contactid = ANY(%s)", (keys,))
    tombs = dict(mesh.conn("eu-west").execute(
        "SELECT pk, (modifiedon, origin)::text FROM sync.tombstone WHERE pk = ANY(%s)",
        (keys,)).fetchall())
    assert set(tombs) == set(keys)
    for k in keys:
        stamp = mesh.one("eu-west", "SELECT modifiedon FROM sync.tombstone WHERE pk = %s", (k,))
        assert stamp > modified[k] and "eu-west" in tombs[k]
    [(op, origin, pks, versions)] = _journal(mesh, mark)
    assert (op, origin, sorted(pks)) == ("d", "eu-west", sorted(keys)) and len(versions) == 3


def test_apply_journals_each_origin_and_can_journal_nothing(mesh: Mesh, kind: str) -> None:
    owner = mesh.conn("eu-west")     # the owner is a regionsync_apply member
    north, east = uuid.uuid4(), uuid.uuid4()
    mark = _last_id(mesh)
    with owner.transaction():
        owner.execute("SELECT set_config('regionsync.origin', 'eu-north', true)")
        owner.execute("INSERT INTO contact (contactid, lastname, sync_origin) VALUES "
                      "(%s, 'N', 'eu-north'), (%s, 'E', 'us-east')", (north, east))
        owner.execute("DELETE FROM contact WHERE contactid = %s", (east,))
    journal = _journal(mesh, mark)
    # an applied change is journaled as the applying peer's, whatever origin its row's
    # newest version has (per-column merge: a forwarding hub must not file a spoke's edit
    # under the origin of another column's writer, who would then never pull it)
    assert sorted((op, origin, sorted(pks)) for op, origin, pks, _ in journal) == [
        ("d", "eu-north", [east]), ("i", "eu-north", sorted([north, east]))]
    mark = _last_id(mesh)
    with owner.transaction():        # a mesh member's apply forwards nothing
        owner.execute("SELECT set_config('regionsync.origin', 'eu-north', true), "
                      "set_config('regionsync.journal', 'off', true)")
        owner.execute("UPDATE contact SET lastname = 'Quiet' WHERE contactid = %s", (north,))
        owner.execute("DELETE FROM contact WHERE contactid = %s", (north,))
    assert _journal(mesh, mark) == []


def test_settings_do_not_let_the_application_skip_capture(mesh: Mesh,
                                                          app: psycopg.Connection) -> None:
    key = contact(app, "Sneaky")
    mark = _last_id(mesh)
    with app.transaction():
        app.execute("SELECT set_config('regionsync.journal', 'off', true), "
                    "set_config('regionsync.origin', 'eu-north', true), "
                    "set_config('regionsync.stamped', 'on', true)")
        app.execute("UPDATE contact SET lastname = 'Seen', sync_origin = 'eu-north' "
                    "WHERE contactid = %s", (key,))
    version, _, origin, _ = _row(mesh, key)
    assert origin == "eu-west" and _journal(mesh, mark) == [("u", "eu-west", [key], [version])]


def test_the_paths_switch_back_and_forth_without_losing_a_change(mesh: Mesh, kind: str) -> None:
    """An operator moves a live region between the paths: each write is journalled once,
    by whichever triggers were in place."""
    owner = mesh.conn("eu-west")
    other = "plpgsql" if kind == "c" else "c"
    first = contact(owner, "Before")
    try:
        migrate(mesh.urls["eu-west"], "eu-west", other)
    except ConfigError as exc:
        pytest.skip(f"the C capture extension is not installed here: {exc}")
    second = contact(owner, "After")
    owner.execute("UPDATE contact SET firstname = 'Both' WHERE contactid = ANY(%s)",
                  ([first, second],))
    migrate(mesh.urls["eu-west"], "eu-west", kind)
    journal = _journal(mesh)
    assert [(op, sorted(pks)) for op, _, pks, _ in journal][-3:] == [
        ("i", [first]), ("i", [second]), ("u", sorted([first, second]))]
    mesh.sync(["eu-west", "eu-north"])
    assert mesh.one("eu-north", "SELECT count(*) FROM contact WHERE firstname = 'Both'") == 2


def test_the_application_cannot_aim_the_c_triggers_at_its_own_table(mesh: Mesh) -> None:
    """The extension is `trusted` and its triggers write the journal as the owner of
    `sync`. An application role with a schema of its own tries to attach them to a
    look-alike `contact` (to forge journal entries or tombstones for the real one): it
    cannot name them, cannot execute them once it can, and they refuse a table outside
    `public` anyway."""
    try:
        migrate(mesh.urls["eu-west"], "eu-west", "c")
    except ConfigError as exc:
        pytest.skip(f"the C capture extension is not installed here: {exc}")
    owner = mesh.conn("eu-west")
    with application_role(mesh.urls["eu-west"], owner) as app:
        role = app.execute("SELECT current_user").fetchone()[0]
        owner.execute(f'CREATE SCHEMA evil AUTHORIZATION "{role}"')
        app.execute("CREATE TABLE evil.contact (contactid uuid PRIMARY KEY, "
                    "versionnumber bigint, modifiedon timestamptz, sync_origin text)")
        attach = ("CREATE TRIGGER forge AFTER DELETE ON evil.contact REFERENCING OLD TABLE "
                  "AS o FOR EACH STATEMENT EXECUTE FUNCTION sync.capture_after('eu-north', "
                  "'contactid', '1')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="schema sync"):
            app.execute(attach)
        owner.execute(f'GRANT USAGE ON SCHEMA sync TO "{role}"')   # a misconfiguration
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="capture_after"):
            app.execute(attach)
        # attached by someone who may (the owner), a table outside public is still refused
        owner.execute(attach)
        app.execute("INSERT INTO evil.contact VALUES (gen_random_uuid(), 1, now(), 'eu-north')")
        tombstones = mesh.one("eu-west", "SELECT count(*) FROM sync.tombstone")
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="schema public only"):
            app.execute("DELETE FROM evil.contact")
        assert mesh.one("eu-west", "SELECT count(*) FROM sync.tombstone") == tombstones
        owner.execute("DROP SCHEMA evil CASCADE")


def test_a_session_stamps_a_column_added_while_it_was_open(mesh: Mesh,
                                                           app: psycopg.Connection) -> None:
    """What the C trigger knows of a table is kept per session (not looked up per
    statement); a column added meanwhile, with its version, is stamped all the same."""
    key = contact(app, "Schema")
    app.execute("UPDATE contact SET firstname = 'one' WHERE contactid = %s", (key,))
    owner = mesh.conn("eu-west")
    owner.execute("ALTER TABLE contact ADD COLUMN nickname text")
    owner.execute("SELECT sync.enable_change_tracking('contact')")
    app.execute("UPDATE contact SET nickname = 'Nick', telephone1 = '5' WHERE contactid = %s",
                (key,))
    nick, phone, first, row = owner.execute(
        "SELECT nickname__v, telephone1__v, firstname__v, "
        "sync.version_of(modifiedon, sync.local_origin()) FROM contact WHERE contactid = %s",
        (key,)).fetchone()
    assert nick == phone == row and first < row
    changed = owner.execute("SELECT cols FROM sync.change_set WHERE tablename = 'contact' "
                            "ORDER BY id DESC LIMIT 1").fetchone()[0]
    attnums = dict(owner.execute("SELECT attname, attnum FROM pg_attribute WHERE attrelid = "
                                 "'public.contact'::regclass AND attname IN "
                                 "('nickname', 'telephone1')").fetchall())
    assert changed == sum(1 << (n - 1) for n in attnums.values())


def test_a_column_another_trigger_changes_takes_its_version(mesh: Mesh,
                                                            app: psycopg.Connection) -> None:
    """The C trigger compares only the columns a statement sets, unless another BEFORE
    UPDATE row trigger could set more: one that fires first (its name sorts earlier) and
    changes a column the statement did not name has that column stamped too, also in a
    session that wrote before the trigger existed."""
    key = contact(app, "Other")
    app.execute("UPDATE contact SET firstname = 'one' WHERE contactid = %s", (key,))
    owner = mesh.conn("eu-west")
    owner.execute("""CREATE FUNCTION public.app_phone() RETURNS trigger LANGUAGE plpgsql AS
                     $$BEGIN NEW.telephone1 := 'set by a trigger'; RETURN NEW; END$$""")
    owner.execute("CREATE TRIGGER app_phone BEFORE UPDATE ON contact "
                  "FOR EACH ROW EXECUTE FUNCTION public.app_phone()")
    try:
        app.execute("UPDATE contact SET lastname = 'Renamed' WHERE contactid = %s", (key,))
        phone, last, first, row, value = owner.execute(
            "SELECT telephone1__v, lastname__v, firstname__v, "
            "sync.version_of(modifiedon, sync.local_origin()), telephone1 "
            "FROM contact WHERE contactid = %s", (key,)).fetchone()
        assert value == "set by a trigger"
        assert phone == last == row and first < row
    finally:
        owner.execute("DROP TRIGGER app_phone ON contact")
        owner.execute("DROP FUNCTION public.app_phone()")
    app.execute("UPDATE contact SET firstname = 'two' WHERE contactid = %s", (key,))
    phone, first = owner.execute("SELECT telephone1__v, firstname__v FROM contact "
                                 "WHERE contactid = %s", (key,)).fetchone()
    assert first > phone              # the trigger is gone: only the column set is stamped
