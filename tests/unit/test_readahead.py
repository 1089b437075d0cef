"""ReadAhead: order, bounded look-ahead, errors raised in the consumer, clean early exit."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from sync.source.readahead import ReadAhead


def test_items_arrive_in_order_and_at_most_depth_ahead() -> None:
    produced: list[int] = []

    def source() -> Iterator[int]:
        for i in range(10):
            produced.append(i)
            yield i

    with ReadAhead(source(), depth=1) as ahead:
        got = []
        for item in ahead:
            time.sleep(0.02)   # the producer runs ahead while we "apply"
            # consumed item, one queued, one being produced: never further
            assert len(produced) <= item + 3
            got.append(item)
    assert got == list(range(10))


def test_producer_error_is_raised_in_the_consumer_after_earlier_items() -> None:
    def source() -> Iterator[int]:
        yield 1
        raise ValueError("peer went away")

    got = []
    with pytest.raises(ValueError, match="peer went away"), ReadAhead(source()) as ahead:
        for item in ahead:
            got.append(item)
    assert got == [1]


def test_leaving_early_stops_the_producer_and_closes_its_generator() -> None:
    closed = threading.Event()
    thread_of_close: list[str] = []

    def source() -> Iterator[int]:
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            thread_of_close.append(threading.current_thread().name)
            closed.set()

    with ReadAhead(source(), depth=2, name="reader") as ahead:
        for item in ahead:
            if item == 3:
                break
    # __exit__ waited for the producer: the generator is closed, in the producer's thread
    assert closed.is_set()
    assert thread_of_close == ["reader"]
    assert not any(t.name == "reader" for t in threading.enumerate())
