"""How the reader reads a batch from the peer: the plan must fit the batch's size.

Observed through the peer's own statistics (``pg_stat_user_tables``), so each test shows
what PostgreSQL did, not what the reader meant to do."""

from __future__ import annotations

import psycopg

from sync.records import ReadPlan
from sync.wire import BINARY_TRAILER
from tests.fix_pg import Mesh
from tests.integration.helpers import peer_scans


def _seed(mesh: Mesh, rows: int) -> psycopg.Connection:
    west = mesh.conn("eu-west")
    west.execute("INSERT INTO contact (lastname) SELECT 'Row-' || g FROM generate_series(1, %s) g",
                 (rows,))
    west.execute("VACUUM ANALYZE contact")   # the planner's row estimate for the table
    mesh.link("eu-north", "eu-west").run_once()
    return west


def test_a_batch_of_most_of_a_table_is_read_by_one_scan_a_small_one_by_key(mesh: Mesh) -> None:
    """A drain of most of a table hashes its keys against one scan of the table (a probe
    per key cost 3× as much); a batch of a few rows still probes the key index."""
    west = _seed(mesh, 3000)
    link = mesh.link("eu-north", "eu-west")
    assert link.conns.session is not None

    west.execute("UPDATE contact SET firstname = 'wide' WHERE lastname <> 'Row-1'")
    seq0, idx0 = peer_scans(west, link.conns.open().source, "public.contact")
    assert link.run_once().rows == 2999
    seq1, idx1 = peer_scans(west, link.conns.open().source, "public.contact")
    assert (seq1 - seq0, idx1 - idx0) == (1, 0)

    west.execute("UPDATE contact SET firstname = 'narrow' WHERE lastname IN ('Row-1', 'Row-2')")
    assert link.run_once().rows == 2
    seq2, idx2 = peer_scans(west, link.conns.open().source, "public.contact")
    assert seq2 == seq1 and idx2 - idx1 == 2

    north = mesh.conn("eu-north")
    assert north.execute("SELECT count(*) FILTER (WHERE firstname = 'wide'), "
                         "count(*) FILTER (WHERE firstname = 'narrow') FROM contact"
                         ).fetchone() == (2998, 2)
    # the switch lasts one COPY: the reader's session is as it was
    assert link.conns.open().source.execute("SELECT current_setting('enable_nestloop'), "
                               "current_setting('jit')").fetchone() == ("on", "on")


def test_a_batch_without_deletes_does_not_read_tombstones(mesh: Mesh) -> None:
    """The journal says which tables had a delete in the range; the others' tombstones are
    not read (one query per table and batch saved), and a delete still arrives."""
    west = _seed(mesh, 20)
    link = mesh.link("eu-north", "eu-west")
    assert link.conns.session is not None
    west.execute("UPDATE contact SET firstname = 'changed' WHERE lastname = 'Row-3'")
    before = peer_scans(west, link.conns.open().source, "sync.tombstone")
    assert link.run_once().rows == 1
    assert peer_scans(west, link.conns.open().source, "sync.tombstone") == before

    west.execute("DELETE FROM contact WHERE lastname = 'Row-4'")
    batch = link.run_once()
    assert batch.applied.get(("contact", "delete")) == 1
    assert sum(peer_scans(west, link.conns.open().source, "sync.tombstone")) > sum(before)
    north = mesh.conn("eu-north")
    assert north.execute("SELECT count(*), count(*) FILTER (WHERE firstname = 'changed') "
                         "FROM contact").fetchone() == (19, 1)


def test_binary_pages_cut_on_every_boundary_carry_every_row_and_no_trailer(mesh: Mesh) -> None:
    """Pages are cut without decoding rows; the binary trailer is the stream's last
    message, so a page that ends with the table (or one row short of it) must not carry it
    as a row, and a table with no row sends no page."""
    west = mesh.conn("eu-west")
    west.execute("INSERT INTO contact (lastname) SELECT 'Row-' || g FROM generate_series(1, 6) g")
    link = mesh.link("us-east", "eu-west", page_size=7)
    session = link.conns.open()
    reader = session.reader
    assert "contact" in reader.binary
    rules, tables = link.plan.tables(mesh.policy, session)
    contact = [t for t in tables if t.name == "contact"]
    for page_size, expected in ((3, [3, 3]), (6, [6]), (7, [6]), (5, [5, 1])):
        with reader.batch():
            pages = list(reader.pages(ReadPlan(), contact, rules, page_size, deletes=False))
        assert [p.rows for p in pages] == expected, page_size
        assert all(s.binary and not s.data.endswith(BINARY_TRAILER)
                   for p in pages for s in p.segments), page_size
    # the rows as they apply: an initial load in one page of 7 (ending on the trailer)
    assert link.run_once().rows == 6
    assert mesh.rows("us-east", "contact") == mesh.rows("eu-west", "contact", "us-east")
    east = mesh.conn("us-east")
    east.execute("DELETE FROM contact")
    west.execute("DELETE FROM contact")
    with reader.batch():
        assert list(reader.pages(ReadPlan(), contact, rules, 3, deletes=False)) == []
