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
    b = Breaker(failures=3, open_seconds=30, clock=clock, first_probe_seconds=30)
    assert [b.failed() for _ in range(2)] == [State.CLOSED, State.CLOSED]
    assert b.failed() is State.OPEN
    assert not b.allow()                     # open: no attempt at all
    clock.now = 29.9
    assert not b.allow()
    clock.now = 30
    assert b.allow() and b.state is State.HALF_OPEN   # one probe
    assert b.succeeded() is State.CLOSED and b.allow()


def test_the_first_probe_comes_soon_and_each_failed_one_doubles_the_wait() -> None:
    """A peer back from a planned restart resumes within seconds (the first probe after
    first_probe_seconds), while one that stays down is asked ever less often, up to
    open_seconds."""
    clock = Clock()
    b = Breaker(failures=1, open_seconds=30, clock=clock, first_probe_seconds=5)
    assert b.failed() is State.OPEN and b.retry_in == 5
    waits = []
    for _ in range(5):
        opened = clock.now
        while not b.allow():
            clock.now += 0.5
        waits.append(clock.now - opened)
        assert b.failed() is State.OPEN         # the probe failed
    assert waits == [5, 10, 20, 30, 30]
    clock.now += 30
    assert b.allow() and b.succeeded() is State.CLOSED
    assert b.failed() is State.OPEN and b.retry_in == 5   # a new outage starts short again


def test_a_success_resets_the_count() -> None:
    b = Breaker(failures=2, clock=Clock())
    b.failed()
    b.succeeded()
    assert b.failed() is State.CLOSED
