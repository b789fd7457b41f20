"""Site health: dead-site detection, suspension, one probe at a time, doubling probes."""

from __future__ import annotations

import pytest

from postline.schedule.site import SiteHealth, SiteState
from postline.testing.clock import VirtualClock


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(start=1000.0)


@pytest.fixture
def site(clock: VirtualClock) -> SiteHealth:
    return SiteHealth(clock, probe_interval_min=60.0, probe_interval_max=300.0, failure_limit=3)


def test_a_new_site_is_active(site: SiteHealth) -> None:
    assert site.can_connect()
    assert not site.is_probe_due()
    assert site.delay_until_probe() is None


def test_consecutive_session_failures_suspend_the_site(site: SiteHealth) -> None:
    site.on_session_failure()
    site.on_session_failure()
    assert site.can_connect()
    site.on_session_failure()
    assert not site.can_connect()
    assert site.state is SiteState.SUSPENDED


def test_a_success_resets_the_failure_count(site: SiteHealth) -> None:
    site.on_session_failure()
    site.on_session_failure()
    site.on_session_success()
    site.on_session_failure()
    site.on_session_failure()
    assert site.can_connect()


def test_all_hosts_failed_suspends_at_once(site: SiteHealth) -> None:
    site.all_hosts_failed()
    assert not site.can_connect()


def test_the_first_probe_is_due_after_the_minimum_interval(
    site: SiteHealth, clock: VirtualClock
) -> None:
    site.all_hosts_failed()
    assert site.delay_until_probe() == 60.0
    clock.advance(59.0)
    assert not site.is_probe_due()
    clock.advance(1.0)
    assert site.is_probe_due()
    assert site.delay_until_probe() == 0.0


def test_one_probe_at_a_time(site: SiteHealth, clock: VirtualClock) -> None:
    site.all_hosts_failed()
    clock.advance(60.0)
    site.begin_probe()
    assert not site.is_probe_due()
    assert site.delay_until_probe() is None
    assert not site.can_connect()


def test_failed_probes_double_the_interval_up_to_the_maximum(
    site: SiteHealth, clock: VirtualClock
) -> None:
    site.all_hosts_failed()
    waits = []
    for _ in range(5):
        wait = site.delay_until_probe()
        assert wait is not None
        waits.append(wait)
        clock.advance(wait)
        assert site.is_probe_due()
        site.begin_probe()
        site.on_probe_failure()
    assert waits == [60.0, 120.0, 240.0, 300.0, 300.0]


def test_a_successful_probe_resumes_and_resets(site: SiteHealth, clock: VirtualClock) -> None:
    site.all_hosts_failed()
    clock.advance(60.0)
    site.begin_probe()
    site.on_probe_failure()
    clock.advance(120.0)
    site.begin_probe()
    site.on_probe_success()
    assert site.can_connect()
    assert site.failures == 0
    site.all_hosts_failed()
    assert site.delay_until_probe() == 60.0  # back to the minimum interval


def test_a_session_in_flight_that_succeeds_revives_the_site(site: SiteHealth) -> None:
    site.all_hosts_failed()
    site.on_session_success()
    assert site.can_connect()


def test_suspending_again_keeps_the_probe_schedule(site: SiteHealth, clock: VirtualClock) -> None:
    site.all_hosts_failed()
    clock.advance(30.0)
    site.all_hosts_failed()
    site.on_session_failure()
    assert site.delay_until_probe() == 30.0


def test_a_late_probe_failure_on_an_active_site_counts_as_a_session_failure(
    site: SiteHealth,
) -> None:
    site.on_probe_failure()
    assert site.failures == 1
    assert site.can_connect()


@pytest.mark.parametrize(("lo", "hi", "limit"), [(0.0, 10.0, 1), (10.0, 5.0, 1), (1.0, 2.0, 0)])
def test_invalid_settings_are_refused(lo: float, hi: float, limit: int) -> None:
    with pytest.raises(ValueError):
        SiteHealth(VirtualClock(), lo, hi, limit)
