"""What change tracking costs the application: the same statements on a tracked table and
on an untracked copy of it in the same database, interleaved, medians, one ratio per
statement shape (issue: at most 1.15× each).

The copy is ``CREATE TABLE … (LIKE contact INCLUDING ALL)``: the same columns, defaults,
constraints and indexes, no capture triggers. Both hold the same rows; every repetition
runs each shape on both tables in alternating order, after a VACUUM of both.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable

import psycopg

from sync.db.catalog import introspect
from sync.source.egress import local_role_statements

from . import workload as w

Shape = Callable[[psycopg.Connection, str, list, str], None]


def _update(size: int) -> Shape:
    def run(conn: psycopg.Connection, table: str, ids: list, rep: str) -> None:
        marker = f"tax-{rep}"
        for i in range(0, 2000 if size == 1 else min(len(ids), 20_000), size):
            conn.execute(f"UPDATE {table} SET firstname = %s WHERE contactid = ANY(%s)",
                         (marker, ids[i:i + size]))
    return run


def _insert_single(conn: psycopg.Connection, table: str, ids: list, rep: str) -> None:
    for i in range(2000):
        conn.execute(f"INSERT INTO {table} (lastname, firstname, address1_country) "
                     "VALUES (%s, 'tax', 'IE')", (f"single-{rep}-{i}",))


def _insert_multi(conn: psycopg.Connection, table: str, ids: list, rep: str) -> None:
    for b in range(10):
        conn.execute(f"INSERT INTO {table} (lastname, firstname, address1_country) "
                     "SELECT 'multi-' || %s || '-' || g, 'tax', 'IE' "
                     "FROM generate_series(1, 1000) g", (f"{rep}-{b}",))


def _copy(conn: psycopg.Connection, table: str, ids: list, rep: str) -> None:
    with conn.cursor().copy(f"COPY {table} (lastname, firstname, address1_country) "
                            "FROM STDIN") as copy:
        for i in range(10_000):
            copy.write_row((f"copy-{rep}-{i}", "tax", "IE"))


def _delete(size: int) -> Shape:
    def run(conn: psycopg.Connection, table: str, ids: list, rep: str) -> None:
        marker = "multi-" if size > 1 else "single-"
        victims = [r[0] for r in conn.execute(
            f"SELECT contactid FROM {table} WHERE lastname LIKE %s", (f"{marker}{rep}-%",))]
        for i in range(0, len(victims), size):
            conn.execute(f"DELETE FROM {table} WHERE contactid = ANY(%s)",
                         (victims[i:i + size],))
    return run


SHAPES: list[tuple[str, Shape]] = [
    ("UPDATE 1 row × 2,000", _update(1)),
    ("UPDATE 100 rows × 200", _update(100)),
    ("UPDATE 1,000 rows × 20", _update(1000)),
    ("INSERT 1 row × 2,000", _insert_single),
    ("INSERT 1,000 rows × 10", _insert_multi),
    ("COPY 10,000 rows", _copy),
    ("DELETE 1 row × 2,000", _delete(1)),
    ("DELETE 1,000 rows × 10", _delete(1000)),
]


def run(url: str, n: int, reps: int) -> list[tuple[str, float, float, float]]:
    """(shape, tracked ms, untracked ms, ratio) per shape, medians over ``reps``."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS contact_plain")
        conn.execute("CREATE TABLE contact_plain (LIKE contact INCLUDING ALL)")
        conn.execute("TRUNCATE contact_plain")
        if conn.execute("SELECT count(*) FROM contact").fetchone()[0] < n:
            w.seed(conn, n)
        conn.execute("INSERT INTO contact_plain SELECT * FROM contact")
        ids = [r[0] for r in conn.execute("SELECT contactid FROM contact ORDER BY contactid "
                                          "LIMIT %s", (n,))]
        assert ids, "no rows to update"
        # the application as deployed: an ordinary role (not regionsync_apply, not a
        # superuser), so the capture triggers take their application path
        schema = introspect(conn)
        for stmt in local_role_statements(schema, daemon="bench_daemon", app="bench_app"):
            conn.execute(stmt)
        conn.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON contact_plain TO bench_app")
        conn.execute("SET ROLE bench_app")
        assert conn.execute("SELECT pg_has_role('regionsync_apply', 'MEMBER')").fetchone() \
            == (False,)
        times: dict[tuple[str, str], list[float]] = {}
        for rep in range(reps):
            conn.execute("VACUUM (ANALYZE) contact")
            conn.execute("VACUUM (ANALYZE) contact_plain")
            tag = f"{rep}-{uuid.uuid4().hex[:4]}"
            for i, (name, shape) in enumerate(SHAPES):
                order = ("contact", "contact_plain") if (rep + i) % 2 == 0 \
                    else ("contact_plain", "contact")
                for table in order:
                    started = time.perf_counter()
                    with conn.transaction():
                        shape(conn, table, ids, tag)    # type: ignore[arg-type]
                    times.setdefault((name, table), []).append(time.perf_counter() - started)
        conn.execute("RESET ROLE")
        conn.execute("DROP TABLE contact_plain")
    out = []
    for name, _ in SHAPES:
        tracked = statistics.median(times[(name, "contact")])
        plain = statistics.median(times[(name, "contact_plain")])
        out.append((name, tracked * 1000, plain * 1000, tracked / plain))
    return out


def report(rows: list[tuple[str, float, float, float]]) -> bool:
    print(f"{'capture tax':26} {'tracked ms':>11} {'untracked ms':>13} {'ratio':>7}  target")
    ok = True
    for name, tracked, plain, ratio in rows:
        good = ratio <= 1.15
        ok = ok and good
        print(f"{name:26} {tracked:11.1f} {plain:13.1f} {ratio:6.2f}×  ≤ 1.15× "
              f"{'PASS' if good else 'FAIL'}")
    return ok
