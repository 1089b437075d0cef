"""Stream ``COPY … TO STDOUT`` with one libpq call per row.

The reader cuts pages out of COPY messages, one message per row. psycopg's ``Copy`` hands
each message over through a generator and its wait loop: ~0.7 µs of Python a row, the
largest cost left on the thread every apply lane waits on for the GIL (34 ms of 50,000
rows). Here a row costs one ``PQgetCopyData`` (``psycopg.pq``, psycopg's own libpq
binding), and the thread waits in ``select()`` — the GIL released — only when libpq has
nothing buffered: 19 ms for the same rows.

Contract: ``copy_out(conn, stmt)`` yields the messages (the binary header and trailer
included, as the server sends them); an error from the server — at the start or midway —
is raised as psycopg raises it (its SQLSTATE class); closing the iterator early reads the
rest of the stream, so the connection is usable afterwards either way. Only the thread
that owns ``conn`` may call it (as for every use of a psycopg connection here).
"""

from __future__ import annotations

import select
from collections.abc import Generator

import psycopg
from psycopg import pq, sql
from psycopg.errors import error_from_result


def _wait(pgconn: pq.abc.PGconn) -> None:
    """Block until the server sends something, then let libpq take it in."""
    select.select([pgconn.socket], [], [])
    pgconn.consume_input()


def _results(pgconn: pq.abc.PGconn) -> list[pq.abc.PGresult]:
    """The statement's results up to its COPY_OUT one, or all of them once it ended."""
    out: list[pq.abc.PGresult] = []
    while True:
        pgconn.consume_input()
        while pgconn.is_busy():
            _wait(pgconn)
        res = pgconn.get_result()
        if res is None:
            return out
        out.append(res)
        if res.status == pq.ExecStatus.COPY_OUT:
            return out


def _raise_any_error(conn: psycopg.Connection, results: list[pq.abc.PGresult]) -> None:
    for res in results:
        if res.status == pq.ExecStatus.FATAL_ERROR:
            raise error_from_result(res, encoding=conn.info.encoding)


def copy_out(conn: psycopg.Connection, stmt: sql.Composable) -> Generator[memoryview, None, None]:
    """The messages of ``stmt`` (a ``COPY … TO STDOUT``), one per row."""
    pgconn = conn.pgconn
    pgconn.send_query(stmt.as_bytes(conn))
    while pgconn.flush():       # a non-blocking connection: the query may go out in parts
        select.select([], [pgconn.socket], [])
    started = _results(pgconn)
    _raise_any_error(conn, started)
    if not started or started[-1].status != pq.ExecStatus.COPY_OUT:
        raise psycopg.ProgrammingError("copy_out needs a COPY … TO STDOUT statement")
    finished = False
    try:
        while True:
            nbytes, data = pgconn.get_copy_data(1)
            if nbytes > 0:
                yield data
            elif nbytes == 0:
                _wait(pgconn)
            else:               # -1: the server ended the COPY (its result follows)
                finished = True
                break
    finally:
        while not finished:     # closed early: read to the end, as psycopg's Copy does
            nbytes, _ = pgconn.get_copy_data(1)
            if nbytes == 0:
                _wait(pgconn)
            finished = nbytes < 0
        ending = _results(pgconn)
    _raise_any_error(conn, ending)
