"""Read the next page from the peer while the current one is applied locally.

Reading (the peer's backend joins journal to rows and streams COPY) and applying (the
local backend stages and upserts) use different connections and different servers, so
serial read-then-apply leaves one of them idle half the time. A thread drains the
page iterator into a small bounded queue: at most ``depth`` pages wait, so memory stays
flat whatever the backlog. psycopg releases the GIL while it waits on the network.

The producer thread is the only user of the source connection while it runs; leaving
the ``with`` block (normally, by ``break``, or by an exception) stops it and waits for it,
so the caller may use the connection again afterwards (e.g. to end its transaction).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")
_DONE = object()


class ReadAhead(Generic[T]):
    """Iterate ``source`` in a background thread, ``depth`` items ahead of the consumer."""

    def __init__(self, source: Iterator[T], depth: int = 1, name: str = "regionsync-read") -> None:
        self._source = source
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._produce, name=name, daemon=True)

    def __enter__(self) -> ReadAhead[T]:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        while self._thread.is_alive():   # unblock a producer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.05)
        self._thread.join()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for item in self._source:
                if not self._put(item):
                    break
        except BaseException as exc:  # handed to the consumer, raised there
            self._error = exc
        finally:
            close = getattr(self._source, "close", None)
            if close is not None:
                close()   # a generator's cleanup (e.g. an open COPY) runs in this thread
            self._put(_DONE)

    def __iter__(self) -> Iterator[T]:
        while True:
            item = self._queue.get()
            if item is _DONE:
                if self._error is not None:
                    raise self._error
                return
            yield item  # type: ignore[misc]
