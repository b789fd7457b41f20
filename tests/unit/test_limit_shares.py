"""Shares of a site's limits among the nodes that want it (cluster/limits.py)."""

from __future__ import annotations

from postline.cluster.limits import RAISE_DELAY, SiteShare, connection_share, rate_share
from postline.schedule.throttle import TokenBucket
from postline.testing.clock import VirtualClock


def test_shares_add_up_to_the_limit_and_rotate_when_scarce() -> None:
    nodes = [f"n{i}-abc" for i in range(5)]
    for limit in (1, 2, 3, 4, 7, 10, 23):
        for k in range(1, 6):
            wanting = set(nodes[:k])
            for epoch in range(20):
                got = {n: connection_share(limit, wanting, n, "mx.example", epoch) for n in nodes}
                assert sum(got.values()) == limit  # the cluster holds exactly the limit
                assert all(got[n] == 0 for n in nodes[k:])  # not wanting: nothing held
                assert max(got.values()) - min(got[n] for n in wanting) <= 1  # equal split
    # one node alone gets everything; a second one halves it
    assert connection_share(10, {"a"}, "a", "s", 0) == 10
    assert connection_share(10, {"a", "b"}, "a", "s", 0) == 5
    # fewer connections than nodes: who holds the one connection changes with the epoch
    holders = {
        next(n for n in nodes if connection_share(1, set(nodes), n, "s", e)) for e in range(50)
    }
    assert len(holders) == len(nodes)
    # the rate follows the connections: a node without one sends nothing
    assert rate_share(10.0, 4, 2) == 5.0
    assert rate_share(10.0, 4, 0) == 0.0
    assert (
        sum(rate_share(9.0, 7, connection_share(7, set(nodes[:3]), n, "s", 1)) for n in nodes[:3])
        == 9.0
    )


def test_a_share_drops_at_once_and_rises_only_after_the_delay() -> None:
    clock = VirtualClock(100.0)
    wanted: list[str] = []
    share = SiteShare("mx.example", 8, 0.0, clock, lambda s: wanted.append(s.key))
    assert share.connections() == 0 and wanted == ["mx.example"]  # asking signals demand
    assert not share.update(8, clock())  # alone: 8 computed, nothing in force yet
    assert share.raise_at() == clock() + RAISE_DELAY
    clock.advance(RAISE_DELAY / 2)
    assert not share.raise_due(clock()) and share.effective == 0
    assert not share.update(4, clock())  # another node came: the pending raise restarts
    assert share.raise_at() == clock() + RAISE_DELAY
    clock.advance(RAISE_DELAY)
    assert share.raise_due(clock()) and share.effective == 4
    assert share.update(2, clock()) and share.effective == 2  # a drop applies at once
    assert share.raise_at() is None
    clock.advance(RAISE_DELAY * 10)  # an old change does not let a new value jump the delay
    assert not share.update(8, clock()) and share.effective == 2
    clock.advance(RAISE_DELAY)
    assert share.raise_due(clock()) and share.effective == 8


def test_a_token_bucket_takes_a_new_rate_from_now_on() -> None:
    clock = VirtualClock(0.0)
    bucket = TokenBucket(10.0, 10.0, clock)
    bucket.set_rate(2.0, 2.0)  # banked tokens are cut to the new burst
    assert bucket.available() == 2.0
    assert bucket.try_take(2) and not bucket.try_take()
    clock.advance(1.0)
    assert bucket.available() == 2.0  # refilled at the new rate
