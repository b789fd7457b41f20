"""Token bucket on virtual time: bursts, refill, "sleep for d", unlimited."""

from __future__ import annotations

import pytest

from postline.schedule.throttle import TokenBucket
from postline.testing.clock import VirtualClock


def test_a_fresh_bucket_allows_a_burst_then_refuses() -> None:
    clock = VirtualClock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [bucket.try_take() for _ in range(4)] == [True, True, True, False]


def test_delay_until_available_is_the_time_to_refill_the_missing_tokens() -> None:
    clock = VirtualClock()
    bucket = TokenBucket(rate=4.0, burst=1, clock=clock)
    assert bucket.delay_until_available() == 0.0
    assert bucket.try_take()
    assert bucket.delay_until_available() == pytest.approx(0.25)
    clock.advance(0.1)
    assert bucket.delay_until_available() == pytest.approx(0.15)


def test_sleeping_exactly_the_returned_delay_is_enough() -> None:
    clock = VirtualClock(start=1_700_000_000.123)
    bucket = TokenBucket(rate=3.0, burst=1, clock=clock)
    for _ in range(1000):
        if not bucket.try_take():
            clock.advance(bucket.delay_until_available())
            assert bucket.try_take()


def test_refill_is_capped_at_the_burst() -> None:
    clock = VirtualClock()
    bucket = TokenBucket(rate=10.0, burst=5, clock=clock)
    for _ in range(5):
        bucket.try_take()
    clock.advance(3600)
    assert bucket.available() == 5
    assert sum(bucket.try_take() for _ in range(10)) == 5


def test_taking_several_tokens_at_once() -> None:
    clock = VirtualClock()
    bucket = TokenBucket(rate=1.0, burst=10, clock=clock)
    assert bucket.try_take(7)
    assert not bucket.try_take(4)
    assert bucket.delay_until_available(4) == pytest.approx(1.0)


def test_rate_zero_is_unlimited() -> None:
    bucket = TokenBucket(rate=0.0, burst=0, clock=VirtualClock())
    assert bucket.unlimited
    assert all(bucket.try_take() for _ in range(10_000))
    assert bucket.delay_until_available(10**6) == 0.0


def test_a_slow_rate_of_one_message_every_ten_seconds() -> None:
    clock = VirtualClock()
    bucket = TokenBucket(rate=0.1, burst=1, clock=clock)
    assert bucket.try_take()
    assert bucket.delay_until_available() == pytest.approx(10.0)


def test_a_clock_stepping_backwards_adds_no_tokens() -> None:
    stepped = [100.0]
    bucket = TokenBucket(rate=1.0, burst=1, clock=lambda: stepped[0])
    assert bucket.try_take()
    stepped[0] = 50.0
    assert not bucket.try_take()


@pytest.mark.parametrize(("rate", "burst"), [(-1.0, 1.0), (1.0, 0.5)])
def test_invalid_settings_are_refused(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, VirtualClock())


def test_more_than_a_burst_can_never_be_taken() -> None:
    bucket = TokenBucket(2.0, 3, VirtualClock())
    with pytest.raises(ValueError):
        bucket.try_take(4)
    with pytest.raises(ValueError):
        bucket.delay_until_available(0)


def test_virtual_clock_moves_only_forward() -> None:
    clock = VirtualClock(10.0)
    assert clock() == clock.now() == 10.0
    assert clock.advance(2.5) == 12.5
    assert clock.advance_to(11.0) == 12.5
    assert clock.advance_to(20.0) == 20.0
    with pytest.raises(ValueError):
        clock.advance(-1)
