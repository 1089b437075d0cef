"""ApplyLanes: concurrency within a table, barriers between tables, retry alone, errors."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import psycopg
import pytest

from sync.apply.lanes import ApplyLanes
from sync.db.catalog import ForeignKey, Schema, TableInfo
from sync.records import Page, Segment

SCHEMA = Schema({
    "account": TableInfo("account", "accountid", ("accountid",), {}),
    "contact": TableInfo("contact", "contactid", ("contactid",), {},
                         foreign_keys=(ForeignKey(("accountid",), "account"),)),
    "node": TableInfo("node", "nodeid", ("nodeid",), {},
                      foreign_keys=(ForeignKey(("parentid",), "node"),)),
})


def page(table: str, n: int, kind: str = "upsert") -> Page:
    return Page((Segment(table, kind, ("pk",), b"", n),))  # type: ignore[arg-type]


class Recorder:
    """A fake apply: records which lane ran which page, when, and can fail on demand."""

    def __init__(self, delay: float = 0.05) -> None:
        self.delay = delay
        self.events: list[tuple[str, str, int, float]] = []   # (what, lane, rows, time)
        self.fail: dict[int, BaseException] = {}
        self.lock = threading.Lock()

    def __call__(self, lane: Any, pg: Page, **kw: Any) -> Any:
        with self.lock:
            self.events.append(("start", lane, pg.rows, time.monotonic()))
        time.sleep(self.delay)
        err = self.fail.pop(pg.rows, None)
        with self.lock:
            self.events.append(("end", lane, pg.rows, time.monotonic()))
        if err is not None:
            raise err
        from sync.records import PageResult
        result = PageResult()
        result.applied[(pg.segments[0].table, "insert")] += pg.rows
        return result

    def span(self, rows: int) -> tuple[float, float]:
        start = next(t for w, _, r, t in self.events if w == "start" and r == rows)
        end = max(t for w, _, r, t in self.events if w == "end" and r == rows)
        return start, end


def test_pages_of_one_table_run_concurrently_and_tables_wait_for_each_other() -> None:
    rec = Recorder()
    lanes = ApplyLanes(["lane1", "lane2"], rec, SCHEMA)  # type: ignore[list-item]
    for rows in (1, 2, 3, 4):
        lanes.submit(page("account", rows))
    lanes.submit(page("contact", 10))
    lanes.barrier()
    lanes.close()
    assert sum(lanes.result.applied.values()) == 20
    assert {lane for _, lane, _, _ in rec.events} == {"lane1", "lane2"}
    # two account pages overlapped in time ...
    (s1, e1), (s2, e2) = rec.span(1), rec.span(2)
    assert s2 < e1 and s1 < e2
    # ... and the contact page started after every account page had ended
    last_account_end = max(rec.span(r)[1] for r in (1, 2, 3, 4))
    assert rec.span(10)[0] >= last_account_end


def test_self_referencing_tables_and_mixed_pages_run_alone() -> None:
    rec = Recorder(delay=0.02)
    lanes = ApplyLanes(["lane1", "lane2"], rec, SCHEMA)  # type: ignore[list-item]
    for rows in (1, 2, 3):
        lanes.submit(page("node", rows))
    mixed = Page((Segment("account", "upsert", ("pk",), b"", 5),
                  Segment("contact", "upsert", ("pk",), b"", 6)))
    lanes.submit(mixed)
    lanes.barrier()
    lanes.close()
    spans = sorted((rec.span(r) for r in (1, 2, 3, 11)), key=lambda s: s[0])
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end     # never two at once


def test_a_deadlocked_page_is_applied_again_alone_and_other_errors_are_raised() -> None:
    rec = Recorder(delay=0.01)
    rec.fail[2] = psycopg.errors.DeadlockDetected("deadlock detected")
    lanes = ApplyLanes(["lane1", "lane2"], rec, SCHEMA)  # type: ignore[list-item]
    for rows in (1, 2, 3):
        lanes.submit(page("account", rows))
    lanes.barrier()
    assert sum(lanes.result.applied.values()) == 6          # page 2 applied on the retry
    assert sum(1 for w, _, r, _ in rec.events if w == "start" and r == 2) == 2
    rec.fail[7] = ValueError("constraint trouble")
    lanes.submit(page("account", 7))
    with pytest.raises(ValueError, match="constraint trouble"):
        lanes.barrier()
    lanes.close()
