"""Every statement on ``sync.dead_letter``: rows that could not be applied, their
back-off, and when one is stuck (migration 0019).

A dead letter is retried with exponential back-off; one that keeps failing for the same
reason will not heal by waiting, so it is marked stuck, retried rarely and reported apart.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg

Conn = psycopg.Connection


# A dead letter that failed this many attempts in a row for the same reason is stuck: no
# later retry is likely to heal it (retries go on, at most hourly), and it is counted apart
# (regionsync_dead_letters_stuck, alert RegionsyncDeadLettersStuck). With the back-off
# below that is about 8 minutes after the first failure.
STUCK_AFTER = 8
STUCK_RETRY_SECONDS = 3600


def put_dead_letter(conn: Conn, peer: str, table: str, key: Any, *, op: str,
                    row: dict[str, Any] | None, error: str, sqlstate: str | None,
                    retryable: bool) -> None:
    """Record (or count again) a row that could not be applied; mark it stuck once it has
    failed ``STUCK_AFTER`` times in a row for the same reason (migration 0019)."""
    conn.execute("""
        INSERT INTO sync.dead_letter AS d (peer, tablename, pk, op, row_data, error, sqlstate,
                                           retryable)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (peer, tablename, pk) DO UPDATE SET
            op = EXCLUDED.op, row_data = EXCLUDED.row_data, error = EXCLUDED.error,
            sqlstate = EXCLUDED.sqlstate, retryable = EXCLUDED.retryable,
            attempts = d.attempts + 1, last_failed_at = now(),
            same_failures = CASE WHEN (d.error, d.sqlstate) IS NOT DISTINCT FROM
                                      (EXCLUDED.error, EXCLUDED.sqlstate)
                                 THEN d.same_failures + 1 ELSE 1 END,
            stuck_at = CASE WHEN (d.error, d.sqlstate) IS DISTINCT FROM
                                 (EXCLUDED.error, EXCLUDED.sqlstate) THEN NULL
                            WHEN d.same_failures + 1 >= %s THEN coalesce(d.stuck_at, now())
                            ELSE d.stuck_at END""",
        (peer, table, key, op, json.dumps(row) if row is not None else None, error, sqlstate,
         retryable, STUCK_AFTER))


def dead_letters_due(conn: Conn, peer: str, limit: int) -> list[tuple[int, str, UUID]]:
    """(id, table, key) of ``peer``'s retryable dead letters whose back-off has passed
    (2^attempts seconds, at most 5 minutes; hourly once stuck)."""
    return conn.execute("""
        SELECT id, tablename, pk FROM sync.dead_letter
        WHERE peer = %s AND retryable
          AND last_failed_at < now() - make_interval(secs => CASE WHEN stuck_at IS NULL
                THEN least(power(2, attempts), 300) ELSE %s END)
        ORDER BY id LIMIT %s""", (peer, STUCK_RETRY_SECONDS, limit)).fetchall()


def dead_letters_by_id(conn: Conn, peer: str, ids: list[int]) -> list[tuple[int, str, UUID]]:
    """(id, table, key) of exactly these dead letters of ``peer``."""
    return conn.execute("SELECT id, tablename, pk FROM sync.dead_letter "
                        "WHERE peer = %s AND id = ANY(%s) ORDER BY id", (peer, ids)).fetchall()


def resolve_dead_letters(conn: Conn, ids: list[int], since: datetime) -> int:
    """Drop the dead letters among ``ids`` that did not fail again after ``since``."""
    return conn.execute("DELETE FROM sync.dead_letter WHERE id = ANY(%s) AND last_failed_at < %s",
                        (ids, since)).rowcount


def count_dead_letters(conn: Conn, peer: str) -> tuple[int, int]:
    """(waiting, of which stuck) for ``peer``."""
    row = conn.execute("SELECT count(*), count(stuck_at) FROM sync.dead_letter "
                       "WHERE peer = %s", (peer,)).fetchone()
    assert row is not None
    return row[0], row[1]


def list_dead_letters(conn: Conn, peer: str | None, table: str | None) -> list[tuple]:
    return conn.execute("""
        SELECT id, peer, tablename, pk, op, sqlstate, retryable, attempts, last_failed_at,
               left(error, 80), stuck_at
        FROM sync.dead_letter
        WHERE (%(peer)s::text IS NULL OR peer = %(peer)s)
          AND (%(table)s::text IS NULL OR tablename = %(table)s)
        ORDER BY id""", {"peer": peer, "table": table}).fetchall()


def get_dead_letter(conn: Conn, ident: int) -> dict[str, Any] | None:
    cur = conn.execute("SELECT * FROM sync.dead_letter WHERE id = %s", (ident,))
    row = cur.fetchone()
    names = [d.name for d in cur.description or []]
    return dict(zip(names, row, strict=True)) if row else None


def dead_letter_ids(conn: Conn) -> list[int]:
    return [r[0] for r in conn.execute("SELECT id FROM sync.dead_letter ORDER BY id")]


def dead_letter_peers(conn: Conn, ids: list[int]) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT DISTINCT peer FROM sync.dead_letter WHERE id = ANY(%s) ORDER BY 1", (ids,))]


def discard_dead_letters(conn: Conn, ids: list[int]) -> int:
    return conn.execute("DELETE FROM sync.dead_letter WHERE id = ANY(%s)", (ids,)).rowcount


