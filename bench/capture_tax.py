"""What change tracking costs the application: the same statements with capture on, with
capture off, and at the floor, interleaved, medians, one ratio per statement shape
(target: at most 1.15× each).

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

from sync import versions
from sync.db.catalog import introspect
from sync.source.egress import local_role_statements

from . import workload as w

# (connection, keys, repetition tag, None or the region to journal as at the floor)
Shape = Callable[[psycopg.Connection, list, str, str | None], None]

# The floor: the same journal entry (and tombstones) written by the statement itself, a
# CTE over its RETURNING rows with no trigger: what PostgreSQL charges for the rows
# capture must write, whoever writes them.
JOURNAL = ("INSERT INTO sync.change_set (tablename, op, origin, pks, versions) "
           "SELECT 'contact', '{op}', %(region)s, array_agg(contactid), array_agg({versions}) "
           "FROM w HAVING count(*) > 0")
STAMP = ("versionnumber = nextval('public.regionsync_versionnumber_seq'), "
         "modifiedon = clock_timestamp()")
# per-column versions (migrations 0018, 0021): the changed column's version (a number, as
# sync.version_of computes it) and the change mask
COLUMN_VERSION = (", firstname__v = (((extract(epoch FROM clock_timestamp()) * 1000000)::bigint"
                  " - 946684800000000) << 11) | %(number)s, sync_changed = 1")
TOMBSTONES = ("t AS (INSERT INTO sync.tombstone AS tb (tablename, pk, modifiedon, origin) "
              "SELECT 'contact', contactid, greatest(clock_timestamp(), "
              "modifiedon + interval '1 microsecond'), %(region)s FROM w "
              "ON CONFLICT (tablename, pk) DO UPDATE SET modifiedon = greatest("
              "EXCLUDED.modifiedon, tb.modifiedon + interval '1 microsecond'), "
              "origin = EXCLUDED.origin) ")


def _update(size: int) -> Shape:
    def run(conn: psycopg.Connection, ids: list, rep: str, floor: str | None) -> None:
        p = {"marker": f"tax-{rep}", "region": floor,
             "number": versions.default_number(floor) if floor else 0}
        for i in range(0, 2000 if size == 1 else min(len(ids), 20_000), size):
            p["ids"] = ids[i:i + size]
            if floor:
                conn.execute("WITH w AS (UPDATE contact SET firstname = %(marker)s, " + STAMP +
                             COLUMN_VERSION +
                             " WHERE contactid = ANY(%(ids)s) RETURNING contactid, "
                             "versionnumber) " + JOURNAL.format(op="u", versions="versionnumber"),
                             p)
            else:
                conn.execute("UPDATE contact SET firstname = %(marker)s "
                             "WHERE contactid = ANY(%(ids)s)", p)
    return run


def _insert(values: str, floor: str | None) -> str:
    insert = ("INSERT INTO contact (lastname, firstname, address1_country) " + values)
    if not floor:
        return insert
    return (f"WITH w AS ({insert} RETURNING contactid, versionnumber) "
            + JOURNAL.format(op="i", versions="versionnumber"))


def _insert_single(conn: psycopg.Connection, ids: list, rep: str, floor: str | None) -> None:
    sql = _insert("VALUES (%(name)s, 'tax', 'IE')", floor)
    for i in range(2000):
        conn.execute(sql, {"name": f"single-{rep}-{i}", "region": floor})


def _insert_multi(conn: psycopg.Connection, ids: list, rep: str, floor: str | None) -> None:
    sql = _insert("SELECT 'multi-' || %(name)s || '-' || g, 'tax', 'IE' "
                  "FROM generate_series(1, 1000) g", floor)
    for b in range(10):
        conn.execute(sql, {"name": f"{rep}-{b}", "region": floor})


def _copy(conn: psycopg.Connection, ids: list, rep: str, floor: str | None) -> None:
    with conn.cursor().copy("COPY contact (lastname, firstname, address1_country) "
                            "FROM STDIN") as copy:
        for i in range(10_000):
            copy.write_row((f"copy-{rep}-{i}", "tax", "IE"))


def _delete(size: int) -> Shape:
    def run(conn: psycopg.Connection, ids: list, rep: str, floor: str | None) -> None:
        marker = "multi-" if size > 1 else "single-"
        victims = [r[0] for r in conn.execute(
            "SELECT contactid FROM contact WHERE lastname LIKE %s", (f"{marker}{rep}-%",))]
        for i in range(0, len(victims), size):
            p = {"ids": victims[i:i + size], "region": floor}
            if floor:
                conn.execute("WITH w AS (DELETE FROM contact WHERE contactid = ANY(%(ids)s) "
                             "RETURNING contactid, modifiedon), " + TOMBSTONES
                             + JOURNAL.format(op="d", versions="nextval("
                                              "'public.regionsync_versionnumber_seq')"), p)
            else:
                conn.execute("DELETE FROM contact WHERE contactid = ANY(%(ids)s)", p)
    return run


MODES = ("on", "off", "floor")
SHAPES: list[tuple[str, Shape, bool]] = [   # (name, statements, has a floor)
    ("UPDATE 1 row × 2,000", _update(1), True),
    ("UPDATE 100 rows × 200", _update(100), True),
    ("UPDATE 1,000 rows × 20", _update(1000), True),
    ("INSERT 1 row × 2,000", _insert_single, True),
    ("INSERT 1,000 rows × 10", _insert_multi, True),
    ("COPY 10,000 rows", _copy, False),
    ("DELETE 1 row × 2,000", _delete(1), True),
    ("DELETE 1,000 rows × 10", _delete(1000), True),
]


def run(url: str, n: int, reps: int) -> list[tuple[str, float, float, float | None]]:
    """(shape, capture on, capture off, floor ms or None), medians over ``reps``."""
    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute("SELECT count(*) FROM contact").fetchone()[0] < n:
            w.seed(conn, n)
        region = conn.execute("SELECT region FROM sync.settings").fetchone()[0]
        ids = [r[0] for r in conn.execute("SELECT contactid FROM contact ORDER BY contactid "
                                          "LIMIT %s", (n,))]
        assert ids, "no rows to update"
        schema = introspect(conn)
        for stmt in local_role_statements(schema, daemon="bench_daemon", app="bench_app"):
            conn.execute(stmt)
        # the floor writes the journal itself (this throwaway database only)
        conn.execute("GRANT USAGE ON SCHEMA sync TO bench_app; "
                     "GRANT SELECT, INSERT, UPDATE ON sync.change_set, sync.tombstone "
                     "TO bench_app; GRANT USAGE ON SEQUENCE sync.change_set_id_seq TO bench_app")

        def mode(m: str) -> None:
            conn.execute("RESET ROLE")
            conn.execute(f"ALTER TABLE contact {'ENABLE' if m == 'on' else 'DISABLE'} "
                         "TRIGGER USER")
            conn.execute("SET ROLE bench_app")
            assert conn.execute("SELECT pg_has_role('regionsync_apply', 'MEMBER')"
                                ).fetchone() == (False,)
        times: dict[tuple[str, str], list[float]] = {}
        for rep in range(reps):
            conn.execute("RESET ROLE")
            conn.execute("VACUUM (ANALYZE) contact")
            tag = f"{rep}-{uuid.uuid4().hex[:4]}"
            for i, (name, shape, has_floor) in enumerate(SHAPES):
                modes = [m for m in MODES if has_floor or m != "floor"]
                shift = (rep + i) % len(modes)
                for m in modes[shift:] + modes[:shift]:
                    mode(m)
                    started = time.perf_counter()
                    with conn.transaction():
                        shape(conn, ids, f"{tag}{m[:2]}", region if m == "floor" else None)
                    times.setdefault((name, m), []).append(time.perf_counter() - started)
        conn.execute("RESET ROLE")
        conn.execute("ALTER TABLE contact ENABLE TRIGGER USER")
    out: list[tuple[str, float, float, float | None]] = []
    for name, _, has_floor in SHAPES:
        on, off = (statistics.median(times[(name, m)]) * 1000 for m in ("on", "off"))
        floor = statistics.median(times[(name, "floor")]) * 1000 if has_floor else None
        out.append((name, on, off, floor))
    return out


def report(rows: list[tuple[str, float, float, float | None]]) -> bool:
    """The tax (on/off, target ≤ 1.15×) and what of it is ours: capture on against the floor
    (the same rows written by the statement itself)."""
    print(f"{'capture tax (ms)':26} {'on':>8} {'off':>8} {'floor':>8} {'on/off':>7}  target"
          f"        {'floor/off':>9} {'on/floor':>8}")
    ok = True
    for name, on, off, floor in rows:
        good = on / off <= 1.15
        ok = ok and good
        fl = f"{floor:8.1f}" if floor else f"{'n/a':>8}"
        rest = (f"{floor / off:8.2f}× {on / floor:7.2f}×" if floor else f"{'':>9} {'':>8}")
        print(f"{name:26} {on:8.1f} {off:8.1f} {fl} {on / off:6.2f}×  ≤ 1.15× "
              f"{'PASS' if good else 'FAIL'}  {rest}")
    print("  floor: the same rows (versions, journal entry, tombstones) written by the "
          "statement itself, a CTE without triggers; on/floor near 1.0× means the rest of "
          "the tax is PostgreSQL writing those rows")
    return ok
