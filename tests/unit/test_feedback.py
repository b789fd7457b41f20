"""Concurrency feedback: +1 per pseudo-cohort of successes, -1 / halving with hysteresis."""

from __future__ import annotations

import pytest

from postline.schedule.feedback import INITIAL_CONCURRENCY, ConcurrencyWindow


def succeed(window: ConcurrencyWindow, times: int) -> None:
    for _ in range(times):
        window.on_success()


def test_starts_at_initial_clamped_to_the_maximum() -> None:
    assert ConcurrencyWindow(5, 20).limit == 5
    assert ConcurrencyWindow(5, 2).limit == 2
    assert ConcurrencyWindow(0, 3).limit == 1
    assert ConcurrencyWindow.for_maximum(10).limit == INITIAL_CONCURRENCY


def test_a_maximum_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        ConcurrencyWindow(1, 0)


def test_grows_by_one_after_a_pseudo_cohort_of_successes() -> None:
    window = ConcurrencyWindow(5, 20)
    succeed(window, 4)
    assert window.limit == 5
    window.on_success()
    assert window.limit == 6
    succeed(window, 6)
    assert window.limit == 7


def test_growth_stops_at_the_maximum() -> None:
    window = ConcurrencyWindow(5, 7)
    succeed(window, 1000)
    assert window.limit == 7


def test_idle_sites_do_not_grow_beyond_what_is_used() -> None:
    window = ConcurrencyWindow(2, 50)
    for _ in range(1000):
        window.on_success(busy=1)  # one connection busy: the window stops at 1 + 2
    assert window.limit == 3


def test_throttle_halves_the_window_once_per_cohort() -> None:
    window = ConcurrencyWindow(16, 20)
    window.on_throttle()
    assert window.limit == 8
    for _ in range(15):  # the other connections of the old cohort complain too
        window.on_throttle()
    assert window.limit == 8
    window.on_throttle()  # a complaint from the new cohort
    assert window.limit == 4


def test_reports_of_any_kind_use_up_the_throttle_hysteresis() -> None:
    window = ConcurrencyWindow(8, 8)
    window.on_throttle()
    succeed(window, 7)
    window.on_throttle()
    assert window.limit == 2


def test_never_below_one() -> None:
    window = ConcurrencyWindow(3, 10)
    for _ in range(100):
        window.on_throttle()
        window.on_connect_failure()
    assert window.limit == 1


def test_connect_failure_decrements_at_the_start_of_a_run() -> None:
    window = ConcurrencyWindow(5, 20)
    window.on_connect_failure()
    assert window.limit == 4  # at once: the reverse hysteresis cycle
    for _ in range(4):
        window.on_connect_failure()
    assert window.limit == 4
    window.on_connect_failure()
    assert window.limit == 3


def test_growth_after_a_decrease_needs_a_full_cohort_again() -> None:
    window = ConcurrencyWindow(5, 20)
    succeed(window, 4)
    window.on_connect_failure()
    assert window.limit == 4
    succeed(window, 3)
    assert window.limit == 4
    window.on_success()
    assert window.limit == 5
