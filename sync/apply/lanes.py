"""Apply the pages of one batch on several local connections at once.

One backend applying pages uses one core; the reader and the peer's backend leave the
rest of the machine idle while a backlog drains. The pages of one batch touch disjoint
rows (a batch reads each changed key once, at one snapshot), so pages of the *same table
and kind* can be applied concurrently on separate connections without row-lock waits.
Order between tables still matters (parents before children, deletes the other way),
so a page of another table or kind — or a page mixing several — waits until every page
in flight has committed (a barrier), and so does the batch's last page, which carries the
token. Tables with a foreign key to themselves are always applied one page at a time.

A page that fails in a lane with a deadlock or serialization error (two rows swapping an
alternate key across pages, say) is applied again after the barrier, alone: pages are
idempotent under last-writer-wins, so the retry is safe.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import psycopg

from sync.apply.applier import Applier
from sync.db.catalog import Schema
from sync.records import Page, PageResult

log = logging.getLogger(__name__)

RETRY_ALONE = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)
ApplyFn = Callable[..., PageResult]    # (applier, page, **kw) -> PageResult


class ApplyLanes:
    """Pages go to the next free lane (``Applier``); ``barrier()`` waits for them all.

    Contract: ``submit()`` returns once the page is handed to a lane (blocking while all
    lanes are busy); errors of a lane are raised by the next ``submit()`` or ``barrier()``.
    ``result`` accumulates what the applied pages did.
    """

    def __init__(self, appliers: list[Applier], apply: ApplyFn, schema: Schema) -> None:
        self._apply = apply
        self._schema = schema
        self._free: queue.Queue[Applier] = queue.Queue()
        for applier in appliers:
            self._free.put(applier)
        self._main = appliers[0]
        self._pool = ThreadPoolExecutor(max_workers=len(appliers),
                                        thread_name_prefix="regionsync-apply")
        self._inflight: list[tuple[Future[PageResult], Page, dict[str, Any]]] = []
        self._key: tuple[str, str] | None = None
        self.result = PageResult()

    def _parallel_key(self, page: Page) -> tuple[str, str] | None:
        """(table, kind) when the page may run beside others of the same key."""
        if len(page.segments) != 1:
            return None
        seg = page.segments[0]
        if any(fk.parent == seg.table for fk in self._schema.tables[seg.table].foreign_keys):
            return None   # a self-reference: a child may sit in another page
        return seg.table, seg.kind

    def _run(self, applier: Applier, page: Page, kw: dict[str, Any]) -> PageResult:
        try:
            return self._apply(applier, page, **kw)
        finally:
            self._free.put(applier)

    def submit(self, page: Page, **kw: Any) -> None:
        key = self._parallel_key(page)
        if key is None or key != self._key:
            self.barrier()
        self._key = key
        applier = self._free.get()          # a free lane (blocks while all are busy)
        self._collect(wait=False)
        self._inflight.append((self._pool.submit(self._run, applier, page, kw), page, kw))

    def _collect(self, wait: bool) -> None:
        retry: list[tuple[Page, dict[str, Any]]] = []
        error: BaseException | None = None
        still: list[tuple[Future[PageResult], Page, dict[str, Any]]] = []
        for future, page, kw in self._inflight:
            if not wait and not future.done():
                still.append((future, page, kw))
                continue
            try:
                self.result.add(future.result())
            except RETRY_ALONE as exc:
                log.info("page of %d rows hit %s beside another page; applying it alone",
                         page.rows, exc.sqlstate)
                retry.append((page, kw))
            except BaseException as exc:
                error = error or exc
        self._inflight = still
        if error is not None:
            if not wait:   # let the rest finish before reporting
                self.barrier()
            raise error
        for page, kw in retry:
            self.barrier()
            self._key = None
            self.result.add(self._apply(self._main, page, **kw))

    def barrier(self) -> None:
        """Wait until every page in flight has committed (or raise its error)."""
        if self._inflight:
            self._collect(wait=True)
        self._key = None

    def close(self) -> None:
        """Wait for the pages in flight (errors are logged, not raised) and stop the lanes."""
        try:
            self.barrier()
        except BaseException as exc:   # the batch is abandoned anyway; its error was raised
            log.debug("lane error while closing: %s", exc)
        self._pool.shutdown(wait=True)
