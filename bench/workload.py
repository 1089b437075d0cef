"""The Dataverse-like contact workload shared by every variant."""

from __future__ import annotations

import time

import psycopg

# 10 columns of data, ~330 bytes a row; the 2 medical columns are excluded from sync.
CONTACT_DDL = """
CREATE TABLE IF NOT EXISTS public.contact (
    contactid        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    accountid        uuid,
    firstname        text,
    lastname         text NOT NULL,
    emailaddress1    text,
    telephone1       text,
    address1_country text,
    birthdate        date,
    medical_notes    text,
    implant_serial   text,
    statecode        integer NOT NULL DEFAULT 0,
    createdon        timestamptz NOT NULL DEFAULT now(),
    modifiedon       timestamptz NOT NULL DEFAULT now(),
    versionnumber    bigint NOT NULL DEFAULT 0,
    sync_origin      text NOT NULL DEFAULT ''
);
-- the business schema's index on the foreign key (alembic 0001): same indexes as
-- regionsync's target, so both maintain the same structures per update
CREATE INDEX IF NOT EXISTS contact_accountid ON public.contact (accountid)"""
SYNCED = ["contactid", "accountid", "firstname", "lastname", "emailaddress1", "telephone1",
          "address1_country", "birthdate", "statecode", "createdon", "modifiedon",
          "sync_origin"]
COPY_FLOOR_COLUMNS = ["contactid", "firstname", "lastname", "emailaddress1", "telephone1",
                      "address1_country", "birthdate", "statecode"]   # the 8 synced data columns


# the capture triggers every bench database gets (`--capture`): auto, c or plpgsql
CAPTURE = "auto"

MEDICAL = ("medical_notes", "implant_serial")


def anchor_node(url: str, region: str) -> tuple[psycopg.Connection, list[str]]:
    """A node of an anchor mesh (native, pglogical): regionsync's schema with its triggers
    off (those systems capture from WAL), and the contact columns it may send: all but the
    medical ones and their versions."""
    from sync.db.migrate import migrate
    migrate(url, region, CAPTURE)
    conn = psycopg.connect(url, autocommit=True)
    for (table,) in conn.execute("SELECT tablename FROM sync.tracked_table").fetchall():
        conn.execute(f'ALTER TABLE public."{table}" DISABLE TRIGGER USER')
    columns = [col for (col,) in conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
        "AND table_name = 'contact' ORDER BY ordinal_position")
        if col not in MEDICAL and col.removesuffix("__v") not in MEDICAL]
    return conn, columns


def seed(conn: psycopg.Connection, n: int, start: int = 1) -> None:
    conn.execute("""
        INSERT INTO contact (lastname, firstname, emailaddress1, telephone1, address1_country,
                             birthdate, medical_notes, implant_serial, statecode)
        SELECT 'Lastname-' || lpad(g::text, 9, '0'), 'Firstname-' || g,
               'person.' || g || '@example-company.com', '+353 1 555 ' || lpad(g::text, 7, '0'),
               'IE', date '1960-01-01' + (g %% 15000),
               'Confidential clinical notes for patient ' || g || ': ' || repeat('x', 90),
               'IMPLANT-SN-' || lpad(g::text, 12, '0'), 0
        FROM generate_series(%s::int, %s::int) g""", (start, start + n - 1))


def keys(conn: psycopg.Connection) -> list:
    return [r[0] for r in conn.execute("SELECT contactid FROM contact ORDER BY contactid")]


def update_all_one_txn(conn: psycopg.Connection, marker: str) -> float:
    """One UPDATE of every row, one commit; returns the commit time."""
    conn.execute("UPDATE contact SET firstname = %s WHERE lastname <> 'MARKER'", (marker,))
    return time.perf_counter()


def update_batches(conn: psycopg.Connection, ids: list, marker: str, size: int = 1000,
                   pace: float | None = None, on_commit=None) -> float:
    """N/size transactions of ``size`` rows; optional pacing in rows/s. Returns last commit."""
    started = time.perf_counter()
    last = started
    for i in range(0, len(ids), size):
        chunk = ids[i:i + size]
        conn.execute("UPDATE contact SET firstname = %s WHERE contactid = ANY(%s)",
                     (marker, chunk))
        last = time.perf_counter()
        if on_commit:
            on_commit(i // size, last)
        if pace:
            due = started + (i + len(chunk)) / pace
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
    return last


def _sample(ids: list) -> list:
    """~100 keys spread over the key space, and the last one: what a poll looks up."""
    return list({*ids[::max(1, len(ids) // 100)], ids[-1]})


def wait_visible(target: psycopg.Connection, ids: list, marker: str, n: int,
                 timeout: float = 600) -> float:
    """Poll the target every ~10 ms until all ``n`` rows carry ``marker``; returns that time.

    Each poll reads ~100 sample rows spread over the key space (index lookups, well under
    a millisecond) and counts every row only once all samples are there. Counting on
    every poll would run a sequential scan of the target 100 times a second, which steals
    a core from whichever variant happens to apply rows in key order last.
    """
    sample = _sample(ids)
    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        seen = target.execute("SELECT count(*) FROM contact WHERE contactid = ANY(%s) "
                              "AND firstname = %s", (sample, marker)).fetchone()[0]
        if seen == len(sample) and target.execute(
                "SELECT count(*) FROM contact WHERE firstname = %s", (marker,)).fetchone()[0] >= n:
            return time.perf_counter()
        time.sleep(0.01)
    raise TimeoutError(f"target never showed marker {marker!r} on {n} rows")


def wait_count(target: psycopg.Connection, n: int, timeout: float = 600,
               ids: list | None = None) -> float:
    """Poll the target every ~10 ms until it holds ``n`` rows; returns that time. With
    ``ids``, each poll first looks up ~100 sample keys (as ``wait_visible`` does) and
    counts only once they are all there."""
    sample = _sample(ids) if ids else []
    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        if (not sample or target.execute(
                "SELECT count(*) FROM contact WHERE contactid = ANY(%s)",
                (sample,)).fetchone()[0] == len(sample)) and target.execute(
                "SELECT count(*) FROM contact").fetchone()[0] >= n:
            return time.perf_counter()
        time.sleep(0.01)
    raise TimeoutError(f"target never reached {n} rows")


def verify(source: psycopg.Connection, target: psycopg.Connection, marker: str | None,
           n: int) -> None:
    """A fast wrong run is a failed run: counts, marker values, medical columns NULL."""
    cnt = target.execute("SELECT count(*) FROM contact").fetchone()[0]
    src = source.execute("SELECT count(*) FROM contact").fetchone()[0]
    if cnt != src:
        raise AssertionError(f"target has {cnt} rows, source {src}")
    if marker is not None:
        got = target.execute("SELECT count(*) FROM contact WHERE firstname = %s",
                             (marker,)).fetchone()[0]
        if got < n:
            raise AssertionError(f"only {got} of {n} rows carry {marker!r}")
    leaked = target.execute("SELECT count(*) FROM contact WHERE medical_notes IS NOT NULL "
                            "OR implant_serial IS NOT NULL").fetchone()[0]
    if leaked:
        raise AssertionError(f"{leaked} rows have medical values at the target")


def engine_page_seconds(conn: psycopg.Connection, page: int = 5000, pages: int = 20) -> float:
    """PostgreSQL's own cost for a page of changes at the target's current size: the median
    of plain UPDATEs of ``page`` random keys on a trigger-less copy of the target's table
    (same indexes). The reference for how much of a per-page time's growth with table size
    is the engine's (random keys in a larger B-tree and heap), not regionsync's."""
    conn.execute("DROP TABLE IF EXISTS bench_engine_ref")
    conn.execute("CREATE TABLE bench_engine_ref (LIKE contact INCLUDING DEFAULTS "
                 "INCLUDING INDEXES)")
    conn.execute("INSERT INTO bench_engine_ref SELECT * FROM contact")
    conn.execute("VACUUM ANALYZE bench_engine_ref")
    keys = [r[0] for r in conn.execute(
        "SELECT contactid FROM bench_engine_ref ORDER BY random() LIMIT %s", (page * pages,))]
    times = []
    for i in range(pages):
        started = time.perf_counter()
        conn.execute("UPDATE bench_engine_ref SET firstname = %s, modifiedon = clock_timestamp()"
                     " WHERE contactid = ANY(%s)", (f"ref-{i}", keys[i * page:(i + 1) * page]))
        times.append(time.perf_counter() - started)
    conn.execute("DROP TABLE bench_engine_ref")
    return sorted(times)[len(times) // 2]
