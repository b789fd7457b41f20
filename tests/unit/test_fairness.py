"""Deficit round robin between tenants of one site."""

from __future__ import annotations

import pytest

from postline.schedule.fairness import TenantRoundRobin


def picks(rr: TenantRoundRobin[str], n: int) -> list[str | None]:
    return [rr.next_tenant() for _ in range(n)]


def test_an_empty_ring_has_no_next_tenant() -> None:
    assert TenantRoundRobin[str]().next_tenant() is None


def test_equal_weights_alternate() -> None:
    rr = TenantRoundRobin[str]()
    rr.add("a")
    rr.add("b")
    assert picks(rr, 6) == ["a", "b", "a", "b", "a", "b"]


def test_weights_are_consecutive_quanta() -> None:
    rr = TenantRoundRobin[str]()
    rr.add("big", weight=3)
    rr.add("small")
    assert picks(rr, 8) == ["big", "big", "big", "small", "big", "big", "big", "small"]


def test_a_small_tenant_is_not_starved_by_a_huge_backlog() -> None:
    backlog = {"bulk": 1_000_000, "tiny": 10}
    rr = TenantRoundRobin[str]()
    for tenant in backlog:
        rr.add(tenant)
    served = 0
    while backlog["tiny"]:
        picked = rr.next_tenant()
        assert picked is not None
        backlog[picked] -= 1
        served += 1
        if backlog[picked] == 0:
            rr.remove(picked)
    assert served <= 20
    assert rr.next_tenant() == "bulk"


def test_a_new_tenant_joins_at_the_back() -> None:
    rr = TenantRoundRobin[str]()
    rr.add("a")
    rr.add("b")
    assert rr.next_tenant() == "a"
    rr.add("c")
    assert picks(rr, 3) == ["b", "a", "c"]


def test_removing_the_head_mid_quantum_forgets_its_credit() -> None:
    rr = TenantRoundRobin[str]()
    rr.add("a", weight=3)
    rr.add("b")
    assert rr.next_tenant() == "a"
    rr.remove("a")
    rr.add("a", weight=3)
    assert picks(rr, 4) == ["b", "a", "a", "a"]


def test_add_updates_the_weight_without_duplicating() -> None:
    rr = TenantRoundRobin[str]()
    rr.add("a")
    rr.add("a", weight=2)
    assert len(rr) == 1
    assert rr.weight("a") == 2
    assert "a" in rr


def test_a_new_weight_applies_from_the_next_turn() -> None:
    rr = TenantRoundRobin[str]()
    rr.add("a", weight=3)
    rr.add("b")
    rr.next_tenant()
    rr.add("a", weight=1)
    assert picks(rr, 5) == ["a", "a", "b", "a", "b"]


def test_removing_an_absent_tenant_is_harmless() -> None:
    rr = TenantRoundRobin[str]()
    rr.remove("ghost")
    assert len(rr) == 0


def test_weights_below_one_are_refused() -> None:
    with pytest.raises(ValueError):
        TenantRoundRobin[str]().add("a", weight=0)
