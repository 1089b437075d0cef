"""The per-link rate limit, on a clock the test moves."""

from __future__ import annotations

from sync.runtime.throttle import TokenBucket


class Time:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def test_a_burst_of_one_second_then_the_rate() -> None:
    t = Time()
    bucket = TokenBucket(1000, clock=t.clock, sleep=t.sleep)
    assert bucket.take(1000) == 0.0                   # one second's worth at once
    assert bucket.take(500) == 0.5                    # then 1,000 rows a second
    assert bucket.take(1000) == 1.0
    t.now += 10                                       # idle: the burst refills, no more
    assert bucket.take(1000) == 0.0 and bucket.take(1) > 0


def test_over_a_long_run_the_average_is_the_rate() -> None:
    t = Time()
    bucket = TokenBucket(250, clock=t.clock, sleep=t.sleep)
    for _ in range(100):
        bucket.take(50)
    assert 5000 / t.now <= 250 * 1.06
