"""Backoff: doubling from retry_min, capped at retry_max, jittered within both bounds."""

from __future__ import annotations

import random

import pytest

from postline.config import DeliveryConfig
from postline.schedule.backoff import (
    JITTER,
    base_delay,
    delay_bounds,
    next_attempt_at,
    retry_delay,
)

POSTFIX_MIN, POSTFIX_MAX = 300.0, 4000.0


def test_base_delay_doubles_from_retry_min_and_caps() -> None:
    delays = [base_delay(a, POSTFIX_MIN, POSTFIX_MAX) for a in range(1, 7)]
    assert delays == [300.0, 600.0, 1200.0, 2400.0, 4000.0, 4000.0]


def test_huge_attempt_counts_stay_at_the_cap() -> None:
    assert base_delay(10**9, 1.0, 3600.0) == 3600.0


def test_jitter_zero_is_the_base_schedule() -> None:
    for attempt in range(1, 10):
        expected = base_delay(attempt, 60.0, 3600.0)
        assert retry_delay(attempt, 60.0, 3600.0, jitter=0.0) == expected


def test_first_retry_is_never_early_and_at_most_twenty_percent_late() -> None:
    rand = random.Random(1)
    draws = [retry_delay(1, 300.0, 3600.0, rand) for _ in range(1000)]
    assert min(draws) >= 300.0
    assert max(draws) <= 300.0 * (1 + JITTER)


def test_capped_retries_are_spread_below_the_ceiling() -> None:
    rand = random.Random(2)
    draws = [retry_delay(20, 300.0, 3600.0, rand) for _ in range(1000)]
    assert max(draws) <= 3600.0
    assert min(draws) >= 3600.0 * (1 - JITTER)
    assert len(set(draws)) > 900  # spread, not piled on the ceiling


def test_middle_of_the_schedule_has_symmetric_jitter() -> None:
    assert delay_bounds(3, 100.0, 10_000.0) == pytest.approx((320.0, 480.0))


def test_seeded_random_is_deterministic() -> None:
    a = [retry_delay(4, 60.0, 3600.0, random.Random(7)) for _ in range(3)]
    assert len(set(a)) == 1


@pytest.mark.parametrize(
    ("attempt", "rmin", "rmax"), [(0, 1.0, 2.0), (1, 0.0, 2.0), (1, 5.0, 2.0), (-3, 1.0, 1.0)]
)
def test_invalid_arguments_are_refused(attempt: int, rmin: float, rmax: float) -> None:
    with pytest.raises(ValueError):
        retry_delay(attempt, rmin, rmax)


def test_next_attempt_is_now_plus_the_delay() -> None:
    due = next_attempt_at(1000.0, 1, 0.0, 86400.0, 60.0, 3600.0, jitter=0.0)
    assert due == 1060.0


def test_retry_past_expiry_becomes_a_final_attempt_at_expiry() -> None:
    # created at 0, lives 1000 s; at 900 the next retry (+600) would be at 1500.
    due = next_attempt_at(900.0, 5, 0.0, 1000.0, 60.0, 600.0, jitter=0.0)
    assert due == 1000.0


def test_expiry_less_than_retry_min_away_means_expire_now() -> None:
    assert next_attempt_at(970.0, 5, 0.0, 1000.0, 60.0, 600.0) is None


def test_after_the_final_attempt_the_message_expires() -> None:
    assert next_attempt_at(1000.0, 6, 0.0, 1000.0, 60.0, 600.0) is None
    assert next_attempt_at(5000.0, 6, 0.0, 1000.0, 60.0, 600.0) is None


def test_works_with_the_config_durations() -> None:
    cfg = DeliveryConfig()
    due = next_attempt_at(0.0, 1, 0.0, cfg.max_age, cfg.retry_min, cfg.retry_max)
    assert due is not None
    assert cfg.retry_min <= due <= cfg.retry_min * (1 + JITTER)


def test_a_whole_life_of_retries_respects_every_bound() -> None:
    rand = random.Random(3)
    now, attempts, times = 0.0, 1, [0.0]
    while (
        due := next_attempt_at(now, attempts, 0.0, 72 * 3600.0, 300.0, 3600.0, rand)
    ) is not None:
        assert 300.0 <= due - now <= 3600.0
        now, attempts = due, attempts + 1
        times.append(now)
    assert times[-1] == 72 * 3600.0  # the last try happens at max_age, not before
    assert 70 < len(times) < 100
