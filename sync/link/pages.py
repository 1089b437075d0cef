"""Applying a batch's pages: read-ahead, apply lanes, the link's rate limit, progress and
page metrics. One object per link; the lanes report from their own threads."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from sync.apply.applier import Applier
from sync.apply.lanes import ApplyLanes
from sync.link.connections import LinkConnections
from sync.link.settings import Clock, monotonic
from sync.records import BatchKind, Page, PageResult, Streamed
from sync.runtime.metrics import Metrics
from sync.runtime.throttle import TokenBucket
from sync.source.readahead import ReadAhead

log = logging.getLogger(__name__)

Progress = Callable[[BatchKind, int], None]   # (kind, rows applied so far in this batch)


class PageSink:
    """Where a link's pages go: its local appliers, within its rate limit."""

    def __init__(self, conns: LinkConnections, *, metrics: Metrics | None,
                 stop: threading.Event, clock: Clock = monotonic) -> None:
        self.conns = conns
        self.settings = conns.settings
        self.metrics = metrics
        self.stop = stop
        self.clock = clock
        rate = self.settings.max_rows_per_second
        self._throttle = TokenBucket(rate) if rate else None
        self.progress: Progress | None = None     # progress bars; else a log line every 5 s
        self._lock = threading.Lock()
        self._rows = 0
        self._logged = 0.0

    def new_batch(self) -> None:
        with self._lock:
            self._rows = 0

    def stream(self, pages: Iterator[Page], *, kind: BatchKind, **kw: Any) -> Streamed:
        """Apply ``pages`` while the next one is read (``ReadAhead``), on the link's apply
        lanes (``ApplyLanes``).

        A batch of one page comes back as ``last``, unapplied: the caller applies it with the
        batch's token, data and token in one transaction. In a batch of several pages every
        page is applied here (the last one beside the others) and ``last`` is None: the
        caller commits the token alone, after all of them — the same guarantee (the token
        never covers a row that is not committed; a replay after a crash is a no-op) one
        page-time sooner. Stops early, with ``complete`` False, when asked to stop."""
        read, rows, several = Counter[str](), 0, False
        held: Page | None = None
        session = self.conns.open()
        lanes = ApplyLanes(self.conns.lanes(), self.apply_on, session.schema)
        kw["kind"] = kind
        try:
            with ReadAhead(pages) as ahead:
                for page in ahead:
                    if held is not None:
                        lanes.submit(held, **kw)
                        if self.stop.is_set():  # SIGTERM: pages in flight commit; then stop
                            lanes.barrier()
                            return Streamed(lanes.result, read, rows, None, complete=False)
                    held = page
                    rows += page.rows
                    for seg in page.segments:
                        if seg.kind != "withdraw":   # a withdrawal is a key not sent
                            read[seg.table] += seg.rows
                    several = several or rows > page.rows
            if several and held is not None:
                lanes.submit(held, **kw)
                held = None
            lanes.barrier()
        finally:
            lanes.close()
        return Streamed(lanes.result, read, rows, held, complete=True)

    def apply(self, page: Page, *, kind: BatchKind, **kw: Any) -> PageResult:
        """Apply one page on the main local connection."""
        return self.apply_on(self.conns.open().applier, page, kind=kind, **kw)

    def apply_on(self, applier: Applier, page: Page, *, kind: BatchKind,
                 **kw: Any) -> PageResult:
        """Apply one page with ``applier`` (within the link's rate limit), timed for the
        metrics."""
        if self._throttle is not None and page.rows:
            self._throttle.take(page.rows)
        started = time.monotonic()
        result = applier.apply_page(page, kind=kind, **kw)
        self._report(kind, page.rows)
        if self.metrics is not None:
            pair = (self.settings.peer, self.settings.region)
            self.metrics.apply_duration.labels(*pair).observe(time.monotonic() - started)
            if page.rows:
                self.metrics.pages.labels(*pair).inc()
                self.metrics.page_size.labels(*pair).observe(page.rows)
        return result

    def _report(self, kind: BatchKind, rows: int) -> None:
        with self._lock:   # lanes report from their own threads
            self._rows += rows
            done = self._rows
        if self.progress is not None:
            self.progress(kind, done)
        elif kind in ("initial", "backfill") and self.clock() - self._logged > 5:
            self._logged = self.clock()
            peer = self.settings.peer
            log.info("%s load from %s: %d rows so far", kind, peer, done,
                     extra={"peer": peer, "rows": done, "kind": kind})
