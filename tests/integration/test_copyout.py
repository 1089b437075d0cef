"""The reader's COPY stream (``sync.source.copyout``) against psycopg's own ``Copy``: the
same bytes, the same errors, and a connection left usable however the stream ends."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from sync.source.copyout import copy_out
from tests.fix_pg import Mesh

ROWS = sql.SQL("COPY (SELECT g, repeat('x', g % 300), now() + g * interval '1 s', "
               "gen_random_uuid() FROM generate_series(1, 20000) g ORDER BY g) TO STDOUT")


@pytest.mark.parametrize("fmt", ["", " (FORMAT binary)"])
def test_the_same_messages_as_psycopg_copy(mesh: Mesh, fmt: str) -> None:
    conn = mesh.conn("eu-west")
    stmt = sql.SQL("COPY (SELECT contactid, lastname, medical_notes FROM contact "
                   "ORDER BY contactid) TO STDOUT" + fmt)
    conn.execute("INSERT INTO contact (lastname, medical_notes) SELECT 'Row-' || g, "
                 "CASE WHEN g % 3 = 0 THEN NULL ELSE repeat('é', g) END "
                 "FROM generate_series(1, 3000) g")
    with conn.transaction():
        ours = [bytes(m) for m in copy_out(conn, stmt)]
        with conn.cursor().copy(stmt) as copy:
            theirs = [bytes(m) for m in copy]
    assert len(ours) == len(theirs) >= 3000 and ours == theirs


def test_an_error_midway_is_raised_as_psycopg_raises_it_and_the_connection_goes_on(
        mesh: Mesh) -> None:
    conn = mesh.conn("eu-west")
    failing = sql.SQL("COPY (SELECT 1 / (g - 15000) FROM generate_series(1, 20000) g) "
                      "TO STDOUT")
    seen = 0
    with pytest.raises(psycopg.errors.DivisionByZero):
        for _ in copy_out(conn, failing):
            seen += 1
    assert seen > 0     # rows came before the error
    assert conn.execute("SELECT 42").fetchone() == (42,)
    with pytest.raises(psycopg.errors.UndefinedTable):    # an error before any row
        list(copy_out(conn, sql.SQL("COPY (SELECT * FROM no_such_table) TO STDOUT")))
    assert conn.execute("SELECT 43").fetchone() == (43,)
    with pytest.raises(psycopg.ProgrammingError, match="COPY"):
        list(copy_out(conn, sql.SQL("SELECT 1")))
    assert conn.execute("SELECT 44").fetchone() == (44,)


def test_a_stream_closed_early_leaves_the_transaction_usable(mesh: Mesh) -> None:
    conn = mesh.conn("eu-west")
    with conn.transaction():
        stream = copy_out(conn, ROWS)
        first = bytes(next(stream))
        stream.close()
        assert first.startswith(b"1\t")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert conn.execute("SELECT count(*) FROM generate_series(1, 5)").fetchone() == (5,)
    # the whole stream, read to its end, has every row
    assert sum(1 for _ in copy_out(conn, ROWS)) == 20000
