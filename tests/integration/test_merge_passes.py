"""The apply upsert's two passes (sync.apply.merge.passes) write what the merge alone
writes: the first pass assigns the rows in which the incoming side is at least as new in
every column, the second merges the rest, and no row may come out different from a single
per-column merge of the same page — values, versions, row time, base and journal mask.

Pages are random: per key the incoming base older, the same or newer; per column the
incoming version older, the same (then the same value: a version names one write) or
newer, or NULL (the base); with and without a column group, as a delta and as a backfill.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime

import psycopg
import pytest
from psycopg import sql

from sync import versions
from sync.apply.merge import dominant_columns, existence, merge_columns, passes, upsert
from sync.db.catalog import TableInfo
from sync.wire import ident_list
from tests.fix_pg import Mesh

PEER, PEER_NUMBER = "eu-north", 7
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
VARIED = ("firstname", "lastname", "emailaddress1", "telephone1", "address1_country")
GROUP = ("telephone1", "address1_country")
KEYS = 300
NEW = 30   # staged keys the target lacks: the first pass inserts them


def _version(at_us: int, origin: int) -> int:
    return (at_us << 11) | origin


def _cols(info: TableInfo) -> tuple[str, ...]:
    data = ("contactid", "accountid", *VARIED, "birthdate", "statecode", "createdon",
            "modifiedon", "sync_origin")
    return (*data, *(c + "__v" for c in info.versioned if c in data), "sync_base")


def _page(conn: psycopg.Connection, info: TableInfo, rng: random.Random) -> list[str]:
    """Target rows at random versions, and a staged page against them; returns the cases
    drawn (so the test can say both passes had work)."""
    base_us = int((datetime(2026, 1, 1, tzinfo=UTC) - EPOCH).total_seconds() * 1e6)
    keys = [uuid.uuid4() for _ in range(KEYS)]
    conn.execute("INSERT INTO contact (contactid, lastname) "
                 "SELECT k, 'L' FROM unnest(%s::uuid[]) k", (keys,))
    cases: list[str] = []
    target, stage = [], []
    for n, key in enumerate(keys):
        t_base = _version(base_us + n * 1000, 1)
        s_base = {"same": t_base, "newer": t_base + (5 << 11), "older": t_base - (5 << 11)}[
            rng.choices(["same", "newer", "older"], [85, 10, 5])[0]]
        t_row: dict[str, object] = {"sync_base": t_base}
        s_row: dict[str, object] = {"sync_base": s_base}
        for c in VARIED:
            t_ver = rng.choice([None, t_base + (rng.randint(1, 50) << 11) + 2])
            how = rng.choice(["older", "same", "same", "newer", "null"])
            cases.append(how)
            t_val = f"t-{n}-{c}"
            t_row[c], t_row[c + "__v"] = t_val, t_ver
            effective = t_ver if t_ver is not None else t_base
            if how == "same":
                s_row[c], s_row[c + "__v"] = t_val, t_ver
            elif how == "null":
                # the incoming column as its insert wrote it: the target's value, if the
                # target holds it at that version too (same insert, same column version)
                same = s_base == t_base and t_ver is None
                s_row[c], s_row[c + "__v"] = (t_val if same else f"s-{n}-{c}"), None
            else:
                step = rng.randint(1, 40) << 11
                s_ver = effective + step if how == "newer" else max(effective - step, 1 << 11)
                s_row[c], s_row[c + "__v"] = f"s-{n}-{c}", s_ver | PEER_NUMBER
        target.append((key, t_row))
        stage.append((key, s_row))
    for key, row in target:
        names = list(row)
        conn.execute(sql.SQL("UPDATE contact SET {} WHERE contactid = %s").format(
            sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in names)),
            (*row.values(), key))
    conn.execute(sql.SQL("UPDATE contact SET modifiedon = {}, sync_origin = 'eu-west' "
                         "WHERE contactid = ANY(%s)").format(
        versions.time_sql(sql.Identifier("sync_base"))), (keys,))
    cols = _cols(info)
    conn.execute(sql.SQL("CREATE TEMP TABLE merge_stage ON COMMIT DROP AS SELECT {} FROM contact "
                         "WHERE contactid = ANY(%s)").format(ident_list(cols)), (keys,))
    conn.execute("INSERT INTO merge_stage SELECT * FROM merge_stage ORDER BY contactid LIMIT %s",
                 (NEW,))
    conn.execute("WITH d AS (SELECT ctid, row_number() OVER (PARTITION BY contactid ORDER BY ctid)"
                 " AS n FROM merge_stage) UPDATE merge_stage m SET contactid = gen_random_uuid() "
                 "FROM d WHERE m.ctid = d.ctid AND d.n = 2")
    for key, row in stage:
        conn.execute(sql.SQL("UPDATE merge_stage SET {}, modifiedon = clock_timestamp(), "
                             "sync_origin = %s WHERE contactid = %s").format(
            sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in row)),
            (*row.values(), PEER, key))
    return cases


def _apply(conn: psycopg.Connection, info: TableInfo, two_passes: bool, backfill: bool,
           groups: tuple[tuple[str, ...], ...], journal: bool = True
           ) -> tuple[tuple[int, int], list[tuple]]:
    cols = _cols(info)
    stamped = () if backfill else ("versionnumber",)
    steps = (passes(info, cols, stamped, backfill=backfill, groups=groups, journal=journal)
             if two_passes else
             [merge_columns(info, cols, stamped, backfill=backfill, groups=groups)])
    counts = upsert(conn, steps, one=sql.SQL("true"), table=sql.Identifier("contact"),
                    cols=ident_list(cols), scols=ident_list(cols, "s"),
                    stage=sql.Identifier("merge_stage"), tname=sql.Literal("contact"),
                    pk=sql.Identifier("contactid"), s_version=existence(info, "s"))
    shown = [c for c in (*cols, "sync_changed") if c != "modifiedon"]
    rows = conn.execute(sql.SQL("SELECT {}, modifiedon = (SELECT s.modifiedon FROM merge_stage s "
                                "WHERE s.contactid = c.contactid) FROM contact c "
                                "WHERE contactid IN (SELECT contactid FROM merge_stage) "
                                "ORDER BY contactid").format(ident_list(shown, "c"))).fetchall()
    return counts, rows


@pytest.mark.parametrize("backfill", [False, True], ids=["delta", "backfill"])
@pytest.mark.parametrize("grouped", [False, True], ids=["columns", "group"])
def test_two_passes_write_what_the_merge_alone_writes(mesh: Mesh, backfill: bool,
                                                      grouped: bool) -> None:
    conn = mesh.conn("eu-west")
    info = mesh.schema.tables["contact"]
    conn.execute("INSERT INTO sync.origin (region, number) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                 (PEER, PEER_NUMBER))
    groups = (GROUP,) if grouped else ()
    rng = random.Random(f"{backfill}-{grouped}")
    with conn.transaction(force_rollback=True):
        conn.execute("SELECT set_config('regionsync.origin', %s, true), "
                     "set_config('regionsync.journal', 'off', true), "
                     "set_config('regionsync.stamped', 'on', true)", (PEER,))
        cases = _page(conn, info, rng)
        assert {"older", "same", "newer", "null"} <= set(cases)
        conn.execute("SAVEPOINT page")
        merged = _apply(conn, info, False, backfill, groups)
        conn.execute("ROLLBACK TO SAVEPOINT page")
        # what the first pass alone takes: some rows, not all (both passes have work)
        _, dominates = dominant_columns(info, _cols(info), (), backfill=backfill,
                                             groups=groups)
        first = conn.execute(sql.SQL(
            "SELECT count(*) FROM merge_stage excluded JOIN contact t "
            "ON t.contactid = excluded.contactid WHERE {}").format(dominates)).fetchone()
        assert first is not None and 0 < first[0] < KEYS
        assert merged[0][0] == NEW
        both = _apply(conn, info, True, backfill, groups)
        conn.execute("ROLLBACK TO SAVEPOINT page")
        # a region that forwards nothing: the same rows, and no mask computed
        unjournaled = _apply(conn, info, True, backfill, groups, journal=False)
    assert both[0] == merged[0] == unjournaled[0]
    assert sum(merged[0]) > first[0] + NEW
    differ = [(a[0], a, b) for a, b in zip(merged[1], both[1], strict=True) if a != b]
    assert not differ, f"{len(differ)} of {KEYS + NEW} rows differ, first: {differ[0]}"
    # the mask is the row's next-to-last column shown
    assert any(row[-2] for row in merged[1])
    assert [row[:-2] + row[-1:] for row in unjournaled[1]] == \
        [row[:-2] + row[-1:] for row in merged[1]]
    assert not any(row[-2] for row in unjournaled[1])
