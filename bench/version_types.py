"""What the column versions' type costs: ``python -m bench.version_types [--reps R]``.

Per-column versions are text today (``'2026-12-02T19:09:55.123456Z eu-west'``, collation
"C"): the target compares them ~5 times per sent column per row in the merge, and the
owner parses the newest one back into a ``timestamptz`` for every row it sends. This
measures the two statements that pay for that, on three layouts of the same 20,000
contacts (one database each, the C capture triggers attached as on a real target):

- ``text``: today's schema, as migration 0018 made it;
- ``bigint``: each version one ``bigint``, microseconds since 2000 shifted left 11 bits
  with an 11-bit origin number (the bench uses a hash of the name: the layout is what is
  measured, not how numbers are assigned);
- ``pair``: each version a ``timestamptz`` plus a ``text`` origin column, compared as a
  row (time first, origin only on a tie).

For each layout and repetition (interleaved): the merge upsert of a 5,000-row page in
which every row's ``firstname`` is newer (today's SQL from ``sync.apply.merge``, which is
the same text for ``bigint``; for ``pair`` each version comparison becomes a row
comparison and each version assignment assigns the origin too), rolled back; and the
owner's ``COPY … TO STDOUT (FORMAT binary)`` of all rows with the row time and origin
derived from the versions sent, read to the end. Prints medians in milliseconds.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

import psycopg
from psycopg import sql

from sync.apply.merge import merge_columns
from sync.db.catalog import TableInfo, introspect
from sync.db.migrate import migrate
from sync.testing.cluster import LocalCluster

from . import cleanup_on_sigterm
from . import workload as w

LAYOUTS = ("text", "bigint", "pair")
PAGE = 5000
# microseconds since 2000-01-01 UTC, shifted to make room for an 11-bit origin number
ENCODE = ("((((extract(epoch FROM left({v}, 27)::timestamptz) - 946684800) * 1000000)::bigint"
          " << 11) | (hashtext(substr({v}, 29)) & 2047))")
NOW = ("((((extract(epoch FROM clock_timestamp()) - 946684800) * 1000000)::bigint << 11)"
       " | (hashtext('eu-west') & 2047))")


def to_layout(conn: psycopg.Connection, info: TableInfo, layout: str) -> None:
    """Rewrite the table's version columns (and its base) in ``layout``, triggers off."""
    if layout == "text":
        return
    conn.execute("ALTER TABLE contact DISABLE TRIGGER USER")
    conn.execute("ALTER TABLE contact ALTER COLUMN sync_base DROP DEFAULT")
    for v in [c + "__v" for c in info.versioned] + ["sync_base"]:
        col = sql.Identifier(v)
        if layout == "bigint":
            conn.execute(sql.SQL("ALTER TABLE contact ALTER COLUMN {} TYPE bigint USING "
                                 + ENCODE.format(v="{}")).format(col, col, col))
            continue
        origin = sql.Identifier(origin_of(v))
        conn.execute(sql.SQL("ALTER TABLE contact ADD COLUMN {} text").format(origin))
        conn.execute(sql.SQL("UPDATE contact SET {o} = substr({v}, 29) WHERE {v} IS NOT NULL"
                             ).format(o=origin, v=col))
        conn.execute(sql.SQL("ALTER TABLE contact ALTER COLUMN {v} TYPE timestamptz "
                             "USING left({v}, 27)::timestamptz").format(v=col))
    conn.execute("ALTER TABLE contact ENABLE TRIGGER USER")
    conn.execute("VACUUM ANALYZE contact")


def origin_of(version: str) -> str:
    return "sync_base_origin" if version == "sync_base" else version.removesuffix("__v") + "__o"


def as_pairs(merge: str) -> str:
    """Today's merge SQL with each version compared as (time, origin) and each version
    assignment also assigning its origin."""
    merge = re.sub(r'coalesce\((\w+)\."(\w+)__v", (\w+)\.sync_base\)',
                   r'ROW(coalesce(\1."\2__v", \1.sync_base), '
                   r'coalesce(\1."\2__o", \1.sync_base_origin))', merge)
    for op in (">", "="):
        merge = merge.replace(f"EXCLUDED.sync_base {op} t.sync_base",
                              f"ROW(EXCLUDED.sync_base, EXCLUDED.sync_base_origin) {op} "
                              "ROW(t.sync_base, t.sync_base_origin)")
    merge = re.sub(r'"(\w+)__v" = CASE WHEN (.*?) THEN EXCLUDED\."\1__v" ELSE t\."\1__v" END',
                   lambda m: f'{m.group(0)}, "{m.group(1)}__o" = CASE WHEN {m.group(2)} '
                             f'THEN EXCLUDED."{m.group(1)}__o" ELSE t."{m.group(1)}__o" END',
                   merge)
    merge = re.sub(r'"(\w+)__v" = CASE WHEN (.*?) THEN coalesce\(t\."\1__v", t\.sync_base\) '
                   r'ELSE t\."\1__v" END',
                   lambda m: f'{m.group(0)}, "{m.group(1)}__o" = CASE WHEN {m.group(2)} THEN '
                             f'coalesce(t."{m.group(1)}__o", t.sync_base_origin) '
                             f'ELSE t."{m.group(1)}__o" END', merge)
    return merge.replace(
        "sync_base = greatest(EXCLUDED.sync_base, t.sync_base)",
        "sync_base = greatest(EXCLUDED.sync_base, t.sync_base), sync_base_origin = CASE WHEN "
        "ROW(EXCLUDED.sync_base, EXCLUDED.sync_base_origin) > ROW(t.sync_base, "
        "t.sync_base_origin) THEN EXCLUDED.sync_base_origin ELSE t.sync_base_origin END")


def upsert_ms(conn: psycopg.Connection, info: TableInfo, layout: str) -> float:
    cols = (info.pk, *info.versioned, "createdon", "modifiedon", "sync_origin",
            *(c + "__v" for c in info.versioned), "sync_base")
    updates, wins = merge_columns(info, cols, ("versionnumber",), backfill=False)
    set_list, where = updates.as_string(conn), wins.as_string(conn)
    newer = {"text": "firstname__v = sync.version_text(clock_timestamp(), 'eu-west')",
             "bigint": f"firstname__v = {NOW}",
             "pair": "firstname__v = clock_timestamp(), firstname__o = 'eu-west'"}[layout]
    if layout == "pair":
        cols += (*(c + "__o" for c in info.versioned), "sync_base_origin")
        set_list, where = as_pairs(set_list), as_pairs(where)
    names = ", ".join(f'"{c}"' for c in cols)
    with conn.transaction():
        conn.execute("SELECT set_config('regionsync.origin', 'eu-west', true), "
                     "set_config('regionsync.journal', 'off', true), "
                     "set_config('regionsync.stamped', 'on', true)")
        conn.execute(f"CREATE TEMP TABLE page ON COMMIT DROP AS SELECT {names} FROM contact "
                     f"ORDER BY contactid LIMIT {PAGE}")
        conn.execute(f"UPDATE page SET firstname = 'new', {newer}, "
                     "modifiedon = clock_timestamp(), sync_origin = 'eu-west'")
        started = time.perf_counter()
        written = conn.execute(
            f"INSERT INTO contact AS t ({names}) SELECT {names} FROM page ORDER BY contactid "
            f"ON CONFLICT (contactid) DO UPDATE SET {set_list} WHERE {where}").rowcount
        elapsed = time.perf_counter() - started
        if written != PAGE:
            raise SystemExit(f"{layout}: the merge wrote {written} rows of {PAGE}")
        raise psycopg.Rollback()
    return elapsed * 1000


def copy_ms(conn: psycopg.Connection, info: TableInfo, layout: str) -> float:
    sent = [c for c in info.versioned if c not in w.MEDICAL]
    newest = "greatest({}, t.sync_base)".format(", ".join(f't."{c}__v"' for c in sent))
    derived = {
        "text": f"left({newest}, 27)::timestamptz, substr({newest}, 29)",
        "bigint": f"timestamptz '2000-01-01 UTC' + ({newest} >> 11) * interval '1 microsecond', "
                  f"({newest} & 2047)::int",
        # the origin of the newest version: CASE evaluates greatest() once
        "pair": "{n}, CASE {n} {w} ELSE t.sync_base_origin END".format(
            n=newest, w=" ".join(f'WHEN t."{c}__v" THEN t."{c}__o"' for c in sent)),
    }[layout]
    versions = ", ".join(f't."{c}__v"' for c in sent)
    started = time.perf_counter()
    with conn.cursor().copy(
            f"COPY (SELECT t.contactid, t.firstname, t.lastname, t.emailaddress1, "
            f"t.telephone1, {versions}, t.sync_base, {derived} FROM contact t) "
            "TO STDOUT (FORMAT binary)") as copy:
        for _ in copy:
            pass
    return (time.perf_counter() - started) * 1000


def main() -> None:
    cleanup_on_sigterm()
    ap = argparse.ArgumentParser(prog="python -m bench.version_types", description=__doc__)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--reps", type=int, default=21)
    args = ap.parse_args()
    cluster = LocalCluster("version-types", settings={"shared_buffers": "1GB"}).start()
    try:
        dbs: dict[str, tuple[psycopg.Connection, TableInfo]] = {}
        for layout in LAYOUTS:
            url = cluster.create_database(layout)
            migrate(url, "eu-north", "c")
            conn = psycopg.connect(url, autocommit=True)
            w.seed(conn, args.rows)
            conn.execute("UPDATE contact SET telephone1 = telephone1 || '0'")  # a version set
            info = introspect(conn).tables["contact"]
            to_layout(conn, info, layout)
            dbs[layout] = conn, info
        times: dict[str, list[float]] = {f"{k} {layout}": [] for k in ("upsert", "copy")
                                         for layout in LAYOUTS}
        for _ in range(args.reps):
            for layout, (conn, info) in dbs.items():
                times[f"upsert {layout}"].append(upsert_ms(conn, info, layout))
                times[f"copy {layout}"].append(copy_ms(conn, info, layout))
        for name, values in times.items():
            print(f"{name:14s} {statistics.median(values):7.1f} ms  "
                  f"[{min(values):.1f}-{max(values):.1f}]")
    finally:
        cluster.remove()


if __name__ == "__main__":
    main()
