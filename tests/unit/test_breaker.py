"""The circuit breaker's states, on a clock the test moves."""

from __future__ import annotations

from sync.runtime.breaker import Breaker, State


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_probes_once_and_closes() -> None:
    clock = Clock()
    b = Breaker(failures=3, open_seconds=30, clock=clock)
    assert [b.failed() for _ in range(2)] == [State.CLOSED, State.CLOSED]
    assert b.failed() is State.OPEN
    assert not b.allow()                     # open: no attempt at all
    clock.now = 29.9
    assert not b.allow()
    clock.now = 30
    assert b.allow() and b.state is State.HALF_OPEN   # one probe
    assert b.succeeded() is State.CLOSED and b.allow()


def test_a_failed_probe_opens_it_for_another_period() -> None:
    clock = Clock()
    b = Breaker(failures=1, open_seconds=10, clock=clock)
    b.failed()
    clock.now = 10
    assert b.allow()
    assert b.failed() is State.OPEN
    clock.now = 19
    assert not b.allow()
    clock.now = 20
    assert b.allow()


def test_a_success_resets_the_count() -> None:
    b = Breaker(failures=2, clock=Clock())
    b.failed()
    b.succeeded()
    assert b.failed() is State.CLOSED
