"""Changes authored in one region reach the others; medical data never leaves."""

from __future__ import annotations

import re
import time

from tests.fix_pg import Mesh
from tests.integration.helpers import account, contact

OTHERS = ["eu-north", "us-east"]
EXCLUDED = ("medical_notes", "implant_serial", "medicalcase")


def test_insert_update_delete_reach_every_region_without_medical_data(mesh: Mesh) -> None:
    west = mesh.conn("eu-west")
    aid = account(west, "A-1")
    cid = contact(west, "Smith", accountid=aid, medical="diabetic", implant="SN-77")
    west.execute("INSERT INTO medicalcase (contactid, diagnosis) VALUES (%s, 'flu')", (cid,))
    mesh.sync()

    for region in OTHERS:
        assert mesh.rows(region, "contact") == mesh.rows("eu-west", "contact")
        assert mesh.rows(region, "account") == mesh.rows("eu-west", "account")
        medical = mesh.conn(region).execute(
            "SELECT medical_notes, implant_serial FROM contact WHERE contactid = %s",
            (cid,)).fetchone()
        assert medical == (None, None)
        assert mesh.one(region, "SELECT count(*) FROM medicalcase") == 0
    assert mesh.one("eu-west", "SELECT medical_notes FROM contact") == "diabetic"

    west.execute("UPDATE contact SET firstname = 'Ann', medical_notes = 'updated' "
                 "WHERE contactid = %s", (cid,))
    mesh.sync()
    for region in OTHERS:
        row = mesh.conn(region).execute(
            "SELECT firstname, medical_notes, sync_origin FROM contact WHERE contactid = %s",
            (cid,)).fetchone()
        assert row == ("Ann", None, "eu-west")
        assert mesh.rows(region, "contact") == mesh.rows("eu-west", "contact")

    west.execute("DELETE FROM medicalcase")
    west.execute("DELETE FROM contact WHERE contactid = %s", (cid,))
    mesh.sync()
    for region in OTHERS:
        assert mesh.one(region, "SELECT count(*) FROM contact") == 0
        assert mesh.one(region, "SELECT count(*) FROM account") == 1


def test_a_medical_only_update_is_not_heard_of_abroad(mesh: Mesh) -> None:
    """An edit of excluded columns only: the values stay home, and so does the fact that
    the row changed — nothing is sent, no row version moves abroad (per-column versions,
    migration 0018); the owner's own "last modified" moves."""
    west = mesh.conn("eu-west")
    cid = contact(west, "Quiet", medical=None, implant=None)
    mesh.sync()
    before = {r: mesh.conn(r).execute("SELECT modifiedon, versionnumber FROM contact").fetchone()
              for r in ("eu-west", "eu-north", "us-east")}
    west.execute("UPDATE contact SET medical_notes = 'new finding', implant_serial = 'SN-9' "
                 "WHERE contactid = %s", (cid,))
    mesh.sync()      # (as the owner: a destination role is not even told, test_column_merge)
    assert mesh.one("eu-west", "SELECT modifiedon FROM contact") > before["eu-west"][0]
    for region in ("eu-north", "us-east"):
        assert mesh.rows(region, "contact") == mesh.rows("eu-west", "contact")
        assert mesh.conn(region).execute(
            "SELECT medical_notes, implant_serial FROM contact").fetchone() == (None, None)
        assert mesh.conn(region).execute(
            "SELECT modifiedon, versionnumber FROM contact").fetchone() == before[region]


def _log_entries(text: str) -> list[str]:
    """Server log entries (continuation lines joined to their entry)."""
    entries: list[str] = []
    for line in text.splitlines():
        if re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line) or not entries:
            entries.append(line)
        else:
            entries[-1] += "\n" + line
    return entries


def test_poll_sql_never_names_an_excluded_column(mesh: Mesh) -> None:
    """Captured from the peer's own server log (log_statement=all): what the poller sends."""
    cluster = mesh.clusters["eu-west"]
    admin = mesh.conn("eu-west")
    admin.execute(f'ALTER DATABASE "{mesh.dbname}" SET log_statement = \'all\'')
    west = mesh.new_conn("eu-west")
    aid = account(west, "A-2")
    cid = contact(west, "Logged", accountid=aid)
    west.execute("INSERT INTO medicalcase (contactid, diagnosis) VALUES (%s, 'x')", (cid,))
    offset = cluster.logfile.stat().st_size
    mesh.pull("eu-north", "eu-west")            # initial load
    west.execute("UPDATE contact SET lastname = 'Logged2', medical_notes = 'y'")
    west.execute("UPDATE medicalcase SET treatment = 'z'")
    mesh.pull("eu-north", "eu-west")            # delta
    mesh.pull("us-east", "eu-west")
    time.sleep(0.2)
    text = cluster.logfile.read_bytes()[offset:].decode(errors="replace")
    polls = [e for e in _log_entries(text) if " regionsync-" in e and "statement:" in e]
    copies = [e for e in polls if "COPY (SELECT" in e and '"contact"' in e]
    assert len(copies) >= 3, polls                # initial + delta + second region
    assert any("egress_changes(" in e for e in copies)  # a delta read, not only initial loads
    for entry in polls:
        for name in EXCLUDED:
            assert name not in entry, entry
    assert mesh.one("eu-north", "SELECT lastname FROM contact") == "Logged2"


def test_journal_holds_one_entry_per_statement_and_every_changed_key(mesh: Mesh) -> None:
    """Capture writes one sync.change_set entry per statement (and origin) with the keys
    and versions as arrays; sync.change_log lists them per key, versions as in the rows."""
    west = mesh.conn("eu-west")
    west.execute("INSERT INTO contact (lastname) SELECT 'Bulk-' || g FROM generate_series(1, 50) g")
    west.execute("UPDATE contact SET firstname = 'x' WHERE lastname <= 'Bulk-3'")   # 23 rows
    west.execute("UPDATE contact SET firstname = 'x' WHERE lastname <= 'Bulk-3'")   # no-op
    west.execute("DELETE FROM contact WHERE lastname = 'Bulk-7'")
    sets = west.execute("SELECT op, origin, cardinality(pks) FROM sync.change_set "
                        "ORDER BY id").fetchall()
    assert sets == [("i", "eu-west", 50), ("u", "eu-west", 23), ("d", "eu-west", 1)]
    per_key = west.execute("SELECT l.pk, l.versionnumber, c.versionnumber FROM sync.change_log l "
                           "JOIN contact c ON c.contactid = l.pk WHERE l.op = 'u'").fetchall()
    assert len(per_key) == 23 and all(v == row_v for _, v, row_v in per_key)
    mesh.pull("eu-north", "eu-west")
    assert mesh.rows("eu-north", "contact") == mesh.rows("eu-west", "contact", "eu-north")
    assert mesh.one("eu-north", "SELECT count(*) FROM contact") == 49


def test_local_inserts_get_system_columns_from_defaults_and_cannot_forge_them(mesh: Mesh) -> None:
    """Inserts have no row trigger (COPY stays bulk): defaults stamp versionnumber,
    modifiedon and sync_origin; a writer that sets them itself is stamped afterwards, so
    it cannot attribute a row to another region or win last-writer-wins with a made-up
    time."""
    west = mesh.conn("eu-west")
    plain = west.execute("INSERT INTO contact (lastname) VALUES ('Plain') "
                         "RETURNING contactid, versionnumber, sync_origin, modifiedon <= now() "
                         "+ interval '1 second'").fetchone()
    assert plain[1] > 0 and plain[2] == "eu-west" and plain[3]
    forged = west.execute(
        "INSERT INTO contact (lastname, sync_origin, modifiedon, versionnumber) VALUES "
        "('Forged origin', 'eu-north', now(), 7), ('Future', 'eu-west', '2999-01-01', 8), "
        "('Past', 'eu-west', '2001-01-01', 9) RETURNING contactid").fetchall()
    rows = west.execute("SELECT lastname, sync_origin, modifiedon BETWEEN now() - interval "
                        "'1 minute' AND clock_timestamp(), versionnumber > %s FROM contact "
                        "WHERE contactid = ANY(%s) ORDER BY lastname",
                        (plain[1], [r[0] for r in forged])).fetchall()
    assert rows == [("Forged origin", "eu-west", True, True), ("Future", "eu-west", True, True),
                    ("Past", "eu-west", True, True)]
    # journaled once each, as eu-west, with the versions the rows have now
    assert west.execute("SELECT op, origin, count(*) FROM sync.change_log l JOIN contact c "
                        "ON c.contactid = l.pk AND c.versionnumber = l.versionnumber "
                        "GROUP BY 1, 2").fetchall() == [("i", "eu-west", 4)]
    assert mesh.one("eu-west", "SELECT count(*) FROM sync.change_log") == 4
    # a made-up version far ahead of the sequence cannot hide the row's later updates
    big = west.execute("INSERT INTO contact (lastname, versionnumber) VALUES ('Big', 10^12) "
                       "RETURNING contactid").fetchone()
    assert mesh.one("eu-west", "SELECT versionnumber FROM contact WHERE contactid = %s",
                    (big[0],)) < 10**12
    west.execute("UPDATE contact SET firstname = 'seen' WHERE contactid = %s", (big[0],))
    assert mesh.one("eu-west", "SELECT count(*) FROM sync.change_log WHERE op = 'u'") == 1
    mesh.pull("eu-north", "eu-west")
    assert mesh.rows("eu-north", "contact") == mesh.rows("eu-west", "contact", "eu-north")
    assert mesh.one("eu-north", "SELECT count(*) FROM contact WHERE sync_origin = 'eu-west'") == 5
    assert mesh.one("eu-north", "SELECT firstname FROM contact WHERE lastname = 'Big'") == "seen"
