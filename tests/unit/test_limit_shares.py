"""Shares of a site's limits among the nodes that want it (cluster/limits.py)."""

from __future__ import annotations

import random

from postline.cluster.limits import RAISE_DELAY, SiteShare, connection_share, rate_share
from postline.schedule.throttle import TokenBucket
from postline.testing.clock import VirtualClock


def test_shares_add_up_to_the_limit_reserve_one_and_rotate_when_scarce() -> None:
    nodes = [f"n{i}-abc" for i in range(5)]
    for limit in (1, 2, 3, 4, 7, 10, 23):
        for k in range(1, 6):
            live = set(nodes[:k])
            for w in range(k + 1):
                wanting = set(nodes[:w])
                for epoch in range(10):
                    got = {n: connection_share(limit, live, wanting, n, "mx", epoch) for n in live}
                    reserve = 1 if limit >= k else 0
                    # the cluster holds the limit, or only the reserves while nobody wants
                    assert sum(got.values()) == (limit if wanting else k * reserve)
                    idle = [got[n] for n in live - wanting]
                    assert idle == [reserve] * len(idle)
                    if wanting:  # the wanting split the rest equally
                        assert max(got.values()) - min(got[n] for n in wanting) <= 1
    live = {"a", "b", "c"}
    assert connection_share(10, live, {"a"}, "a", "s", 0) == 8  # the others' reserves
    pair = [connection_share(10, live, {"a", "b"}, n, "s", 0) for n in ("a", "b")]
    assert sorted(pair) == [4, 5]  # 9 split, c keeps 1
    assert connection_share(10, {"a"}, {"a"}, "a", "s", 0) == 10  # alone: the whole limit
    # fewer connections than nodes: who holds the one connection changes with the epoch
    holders = {
        next(n for n in nodes if connection_share(1, nodes, nodes, n, "s", e)) for e in range(50)
    }
    assert len(holders) == len(nodes)
    # the rate follows the connections: a node without one sends nothing
    assert rate_share(10.0, 4, 2) == 5.0
    assert rate_share(10.0, 4, 0) == 0.0


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


def test_views_that_differ_for_a_moment_never_hold_more_than_the_limit() -> None:
    """Nodes see each change of the view (who is live, who wants the site) up to
    RAISE_DELAY late, each at its own moment; the shares in force never add up to more
    than the limit (limits.py: drop at once, raise late)."""
    nodes = ["a", "b", "c", "d"]
    for seed in range(100):
        rnd = random.Random(seed)
        limit = rnd.choice([1, 2, 3, 4, 6, 10])
        clock = VirtualClock(0.0)
        shares = {n: SiteShare("s", limit, 0.0, clock, lambda s: None) for n in nodes}
        views: list[tuple[float, set[str], set[str]]] = [(-RAISE_DELAY, {"a"}, set())]
        for _ in range(12):  # each change comes at least one delay after the last
            live = {n for n in nodes if rnd.random() < 0.7} or {"a"}
            wanting = {n for n in live if rnd.random() < 0.6}
            views.append((views[-1][0] + RAISE_DELAY * rnd.uniform(1.0, 3.0), live, wanting))
        lag = {n: RAISE_DELAY * rnd.uniform(0.0, 0.95) for n in nodes}
        while clock() < views[-1][0] + 2 * RAISE_DELAY:
            now = clock()
            live_now = next(v[1] for v in reversed(views) if v[0] <= now)
            for n, share in shares.items():
                if n not in live_now:  # not running: holds nothing, starts from nothing
                    shares[n] = SiteShare("s", limit, 0.0, clock, lambda s: None)
                    continue
                _, live, wanting = next(v for v in reversed(views) if v[0] + lag[n] <= now)
                computed = connection_share(limit, live, wanting, n, "s", 0) if n in live else 0
                share.update(computed, now)
            held = sum(shares[n].effective for n in live_now)
            assert held <= limit, (seed, now, {n: s.effective for n, s in shares.items()})
            clock.advance(RAISE_DELAY / 20)


def test_a_token_bucket_takes_a_new_rate_from_now_on() -> None:
    clock = VirtualClock(0.0)
    bucket = TokenBucket(10.0, 10.0, clock)
    bucket.set_rate(2.0, 2.0)  # banked tokens are cut to the new burst
    assert bucket.available() == 2.0
    assert bucket.try_take(2) and not bucket.try_take()
    clock.advance(1.0)
    assert bucket.available() == 2.0  # refilled at the new rate
