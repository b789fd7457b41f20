"""Scheduler invariants under hypothesis: backoff bounds, token-bucket rate, window range,
round-robin fairness."""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from postline.schedule.backoff import base_delay, delay_bounds, next_attempt_at, retry_delay
from postline.schedule.fairness import TenantRoundRobin
from postline.schedule.feedback import ConcurrencyWindow
from postline.schedule.throttle import SLACK, TokenBucket
from postline.testing.clock import VirtualClock

retry_mins = st.floats(min_value=0.001, max_value=86_400.0)
factors = st.floats(min_value=1.0, max_value=1_000.0)
attempts = st.integers(min_value=1, max_value=200)


@given(retry_mins, factors, attempts)
def test_base_delay_is_monotone_and_capped(rmin: float, factor: float, attempt: int) -> None:
    rmax = rmin * factor
    now, later = base_delay(attempt, rmin, rmax), base_delay(attempt + 1, rmin, rmax)
    assert rmin <= now <= later <= rmax


@given(retry_mins, factors, attempts)
def test_jitter_bounds_are_monotone_in_attempt(rmin: float, factor: float, attempt: int) -> None:
    rmax = rmin * factor
    lo1, hi1 = delay_bounds(attempt, rmin, rmax)
    lo2, hi2 = delay_bounds(attempt + 1, rmin, rmax)
    assert lo1 <= lo2 and hi1 <= hi2


@given(retry_mins, factors, attempts, st.integers(0, 2**32))
def test_retry_delay_never_leaves_retry_min_and_retry_max(
    rmin: float, factor: float, attempt: int, seed: int
) -> None:
    rmax = rmin * factor
    assert rmin <= retry_delay(attempt, rmin, rmax, random.Random(seed)) <= rmax


@given(
    retry_mins,
    factors,
    attempts,
    st.floats(min_value=0.0, max_value=1e6),
    st.floats(min_value=0.0, max_value=1e7),
    st.integers(0, 2**32),
)
def test_next_attempt_is_within_bounds_and_never_after_expiry(
    rmin: float, factor: float, attempt: int, age: float, max_age: float, seed: int
) -> None:
    rmax = rmin * factor
    created = 1_700_000_000.0
    now = created + age
    due = next_attempt_at(now, attempt, created, max_age, rmin, rmax, random.Random(seed))
    if due is None:
        assert created + max_age - now < rmin
    else:
        assert due <= created + max_age
        slack = 1e-6  # the float resolution of a Unix timestamp is about 0.24 µs
        assert rmin - slack <= due - now <= rmax + slack


@settings(max_examples=300)
@given(
    st.floats(min_value=0.01, max_value=1000.0),
    st.integers(min_value=1, max_value=50),
    st.lists(st.floats(min_value=0.0, max_value=2.0), min_size=1, max_size=300),
)
def test_token_bucket_never_exceeds_rate_times_t_plus_burst(
    rate: float, burst: int, gaps: list[float]
) -> None:
    clock = VirtualClock(start=1_700_000_000.0)
    bucket = TokenBucket(rate, burst, clock)
    elapsed, granted = 0.0, list[float]()
    for gap in gaps:
        clock.advance(gap)
        elapsed += gap
        while len(granted) < 20_000 and bucket.try_take():
            granted.append(elapsed)
    # count(i..j) = j - i + 1 <= rate * (t_j - t_i) + burst for every window i <= j, i.e.
    # v_j - v_i <= burst - 1 with v_k = k - rate * t_k: check against the running minimum.
    tolerance = rate * SLACK + 1e-6  # the bucket's documented rounding debt, plus float noise
    lowest = math.inf
    for k, t in enumerate(granted):
        v = k - rate * t
        lowest = min(lowest, v)
        assert v - lowest <= burst - 1 + tolerance


@given(
    st.integers(min_value=1, max_value=30),
    st.integers(min_value=1, max_value=100),
    st.lists(st.sampled_from(["ok", "throttle", "connfail", "busy"]), max_size=500),
)
def test_concurrency_window_stays_within_one_and_maximum(
    initial: int, maximum: int, events: list[str]
) -> None:
    window = ConcurrencyWindow(initial, maximum)
    for event in events:
        if event == "ok":
            window.on_success()
        elif event == "busy":
            window.on_success(busy=window.limit)
        elif event == "throttle":
            window.on_throttle()
        else:
            window.on_connect_failure()
        assert 1 <= window.limit <= maximum


@given(st.integers(min_value=1, max_value=200), st.integers(min_value=0, max_value=50))
def test_two_tenants_get_at_least_k_minus_1_of_any_2k_picks(k: int, warmup: int) -> None:
    rr = TenantRoundRobin[str]()
    rr.add("bulk")
    rr.add("tiny")
    for _ in range(warmup):
        rr.next_tenant()
    window = [rr.next_tenant() for _ in range(2 * k)]
    assert window.count("bulk") >= k - 1
    assert window.count("tiny") >= k - 1


@given(
    st.lists(st.integers(min_value=1, max_value=8), min_size=1, max_size=6),
    st.integers(min_value=0, max_value=100),
    st.integers(min_value=1, max_value=300),
)
def test_weighted_share_of_any_window(weights: list[int], warmup: int, length: int) -> None:
    rr = TenantRoundRobin[int]()
    for tenant, weight in enumerate(weights):
        rr.add(tenant, weight)
    for _ in range(warmup):
        rr.next_tenant()
    window = [rr.next_tenant() for _ in range(length)]
    total = sum(weights)
    full_rounds = max(0, (length - total + 1) // total)
    for tenant, weight in enumerate(weights):
        assert window.count(tenant) >= weight * full_rounds


@given(
    st.lists(st.integers(min_value=1, max_value=8), min_size=1, max_size=6),
    st.integers(min_value=0, max_value=100),
)
def test_a_new_tenant_is_served_within_one_round(weights: list[int], warmup: int) -> None:
    rr = TenantRoundRobin[str]()
    for tenant, weight in enumerate(weights):
        rr.add(f"t{tenant}", weight)
    for _ in range(warmup):
        rr.next_tenant()
    rr.add("new")
    picks = [rr.next_tenant() for _ in range(sum(weights) + 1)]
    assert "new" in picks
