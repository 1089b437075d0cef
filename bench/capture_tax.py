"""What change tracking costs the application: the same statements with capture on and
with capture off, interleaved, medians, one ratio per statement shape (issue: at most
1.15× each).

"Off" is the same table with regionsync's triggers disabled (``DISABLE TRIGGER USER``
keeps the foreign-key checks): the same rows, indexes, foreign keys (a contact's
children are checked on DELETE either way) and bloat, so the ratio is the capture alone.
An untracked copy (``LIKE … INCLUDING ALL``) would have no children to check and made
DELETE look 4× dearer than its capture is. The statements run as an ordinary
application role (not a superuser, not regionsync_apply), as deployed.
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
    """(shape, capture-on ms, capture-off ms, ratio) per shape, medians over ``reps``."""
    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute("SELECT count(*) FROM contact").fetchone()[0] < n:
            w.seed(conn, n)
        ids = [r[0] for r in conn.execute("SELECT contactid FROM contact ORDER BY contactid "
                                          "LIMIT %s", (n,))]
        assert ids, "no rows to update"
        schema = introspect(conn)
        for stmt in local_role_statements(schema, daemon="bench_daemon", app="bench_app"):
            conn.execute(stmt)

        def capture(on: bool) -> None:
            conn.execute("RESET ROLE")
            conn.execute(f"ALTER TABLE contact {'ENABLE' if on else 'DISABLE'} TRIGGER USER")
            conn.execute("SET ROLE bench_app")
            assert conn.execute("SELECT pg_has_role('regionsync_apply', 'MEMBER')"
                                ).fetchone() == (False,)
        times: dict[tuple[str, bool], list[float]] = {}
        for rep in range(reps):
            conn.execute("RESET ROLE")
            conn.execute("VACUUM (ANALYZE) contact")
            tag = f"{rep}-{uuid.uuid4().hex[:4]}"
            for i, (name, shape) in enumerate(SHAPES):
                for on in ((True, False) if (rep + i) % 2 == 0 else (False, True)):
                    capture(on)
                    started = time.perf_counter()
                    with conn.transaction():
                        shape(conn, "contact", ids, f"{tag}{'t' if on else 'p'}")
                    times.setdefault((name, on), []).append(time.perf_counter() - started)
        conn.execute("RESET ROLE")
        conn.execute("ALTER TABLE contact ENABLE TRIGGER USER")
    out = []
    for name, _ in SHAPES:
        tracked = statistics.median(times[(name, True)])
        plain = statistics.median(times[(name, False)])
        out.append((name, tracked * 1000, plain * 1000, tracked / plain))
    return out


def report(rows: list[tuple[str, float, float, float]]) -> bool:
    print(f"{'capture tax':26} {'capture on':>11} {'capture off':>13} {'ratio':>7}  target")
    ok = True
    for name, tracked, plain, ratio in rows:
        good = ratio <= 1.15
        ok = ok and good
        print(f"{name:26} {tracked:11.1f} {plain:13.1f} {ratio:6.2f}×  ≤ 1.15× "
              f"{'PASS' if good else 'FAIL'}")
    return ok
