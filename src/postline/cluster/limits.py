"""Cluster-wide connection and rate limits of a destination site: this node's share.

Why: a site's ``max_connections`` and ``max_message_rate`` (``[delivery.shaping]``) are
what the *destination* tolerates from us, not from one process. Enforced per node, two
nodes opened twice the connections a receiver allows (and got 421s, or a block). The
limits now hold for the whole cluster (issue 15 item 5), without a network round trip on
the hot path: each node holds a *share* of each site it delivers to, and only the shares
move through NATS.

Design (the I/O half is :mod:`postline.cluster.shared_limits`; this module is the pure
half, unit-tested on an injected clock):

* **Demand.** A node *wants* a site while it has more work for it than its reserve
  (below) serves, counting jobs in the site's window, sessions open and a lease on the
  way, and ``HOLD`` seconds more. Each node publishes the set of sites it wants
  (hashed: 13 bytes a site) under its member name in the KV bucket ``<prefix>_LIMITS``,
  at once when the set changes and every ``BEAT`` otherwise, and watches the bucket for
  the others' sets. The long tail of sites with a message now and then is served by
  the reserves and never published. (A node wanting some 75,000 sites at once would
  outgrow NATS's 1 MB max_payload: its puts fail and it is fenced, see below.)
* **Shares from the membership view, no compare-and-set.** When a site's limit of
  ``N`` connections covers one per *live* node (membership.py's heartbeats), each live
  node that does not want the site keeps one in *reserve*, so the first message to a
  site after a quiet spell goes out at once. The rest (the pool) is split equally
  among the ``k`` live nodes that want it: ``pool // k`` each, and one more to the
  first ``pool % k`` in an order hashed from (site, epoch, node) that changes every
  ``EPOCH`` seconds, so when ``N`` is below the live nodes (no reserves then) the nodes
  left at 0 take turns. The rate share is ``R * share / N``: a node without a
  connection has no rate either. Every node computes the same split from the same
  view; nothing is claimed, locked or counted in NATS, so the unchecked compare-and-set
  of nats-server 2.9.10 (nats-io/nats-server#4320, membership.py) plays no part. One
  node delivering a big campaign to one domain (one queue, one owner) gets the site's
  whole limit but the others' reserves.
* **Drop at once, raise late.** Views differ for a moment (a KV put reaches the others
  in milliseconds, a membership change within a ``BEAT``). A share that falls applies
  at once (sessions over it close after their message in flight); one that rises
  applies only when the computed value has stayed the same for ``RAISE_DELAY``. In
  every view the live nodes' shares add up to at most ``N``. After a change, until
  ``RAISE_DELAY`` has passed every node holds at most its share in the view before
  (a rise waits, a fall is lower still); once every node has seen the change, at most
  its share in the view after. While a change reaches every node within
  ``RAISE_DELAY`` one of the two covers every moment, so the cluster's total stays
  within ``N``, apart from messages in flight when a share fell. A joining node holds
  nothing until membership's ``WARM_UP`` is over (it owns no queue), by when the others
  count it. The price: a node uses more than its reserve ``RAISE_DELAY`` after it
  starts wanting a site, and a site wanted by one node gets ``N - (live - 1)``.
* **A node that dies releases its share.** Its heartbeat stops; after membership's TTL
  the others no longer count it (its demand entry, not refreshed, is ignored after
  ``STALE`` seconds anyway) and their shares rise, ``RAISE_DELAY`` later (about 7 s
  after a kill -9 in all). A node that cannot publish for ``FENCE`` seconds gives up
  every share, reserves too (the others may have counted it out and taken its part),
  until it publishes again.

Scope: the limits are shared per datacenter (each has its own NATS cluster and stream
prefix); every node must have the same ``[delivery.shaping]`` (each computes with its own).
Embedded mode is unchanged: its sites have no share (``Destination.share is None``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection

BEAT = 1.0  # seconds between publications of this node's wanted sites (also the TTL refresh)
HOLD = 3.0  # seconds a site stays wanted after the last sign of work for it
RAISE_DELAY = 1.0  # seconds a higher share must stay computed before it applies
EPOCH = 30.0  # seconds between rotations of who gets the remainder (and turns when N < k)
STALE = 5.0  # seconds after which another node's unrefreshed demand is ignored
FENCE = 3.0  # seconds without a successful publication after which this node holds nothing


def site_hash(site: str) -> str:
    """A site key as it travels in the bucket (KV-safe characters, 12 of them)."""
    return hashlib.blake2b(site.encode(), digest_size=6).hexdigest()


def _rank(site: str, epoch: int, node: str) -> bytes:
    return hashlib.blake2b(f"{site}\0{epoch}\0{node}".encode(), digest_size=8).digest()


def connection_share(
    limit: int, live: Collection[str], wanting: Collection[str], me: str, site: str, epoch: int
) -> int:
    """This node's connections to ``site`` when the ``live`` nodes share ``limit``.

    When the limit covers one connection per live node, every live node that does not
    want the site keeps one in reserve (a first connection without the raise delay);
    the rest is split equally among the live nodes in ``wanting``. The shares of all
    live nodes add up to ``limit`` exactly; when ``limit`` is smaller than the number
    of wanting nodes, who gets one changes with ``epoch``.
    """
    if limit <= 0:
        return 0
    nodes = set(live) | {me}
    wanting = nodes.intersection(wanting)
    reserve = 1 if limit >= len(nodes) else 0
    if me not in wanting:
        return reserve
    pool = limit - reserve * (len(nodes) - len(wanting))
    base, extra = divmod(pool, len(wanting))
    if extra == 0:
        return base
    order = sorted(wanting, key=lambda node: _rank(site, epoch, node))
    return base + (1 if order.index(me) < extra else 0)


def rate_share(rate: float, limit: int, connections: int) -> float:
    """This node's messages per second: the site's rate in proportion to its connections."""
    if limit <= 0:
        return 0.0
    return rate * connections / limit


class SiteShare:
    """One site's share on this node: ``computed`` from the current view, ``effective``
    in force (what sessions are allowed). Lowered at once, raised ``RAISE_DELAY`` after
    the computed value last changed (:meth:`update`, :meth:`raise_due`)."""

    __slots__ = ("_clock", "_on_want", "asked", "changed_at", "computed", "effective",
                 "hashed", "key", "limit", "pending", "rate", "wanted")  # fmt: skip

    def __init__(
        self,
        key: str,
        limit: int,
        rate: float,
        clock: Callable[[], float],
        on_want: Callable[[SiteShare], None],
    ) -> None:
        self.key = key
        self.hashed = site_hash(key)
        self.limit = max(1, limit)
        self.rate = rate
        self.computed = 0
        self.effective = 0
        self.changed_at = clock()
        self.asked = float("-inf")  # when this node last saw work for the site
        self.wanted = False  # in the set this node publishes
        self.pending: object | None = None  # the caller's timer for a raise (a TimerHandle)
        self._clock = clock
        self._on_want = on_want

    def connections(self) -> int:
        """The hot path (``Destination.session_limit``): an attribute read. A site not
        yet wanted is reported (``on_want`` checks it has work: ``postline status``
        asks too), so a node's new demand is published at once, not at the next tick."""
        if not self.wanted:
            self._on_want(self)
        return self.effective

    def hold(self, connections: int) -> None:
        """Start with ``connections`` in force: a reserve the others have counted as
        this node's all along (no raise delay)."""
        self.computed = self.effective = connections

    def rate_now(self) -> float:
        """Messages per second in force for this node (0 when it holds no connection)."""
        return rate_share(self.rate, self.limit, self.effective)

    def update(self, computed: int, now: float) -> bool:
        """Take the view's value; True when the share in force changed (it fell, or a
        raise was already due). A pending raise is for :meth:`raise_due` to apply."""
        if computed != self.computed:
            self.computed = computed
            self.changed_at = now
        if computed < self.effective:
            self.effective = computed
            return True
        return self.raise_due(now)

    def raise_due(self, now: float) -> bool:
        """Apply a higher computed value that has held for ``RAISE_DELAY``; True if so."""
        if self.computed > self.effective and now >= self.changed_at + RAISE_DELAY:
            self.effective = self.computed
            return True
        return False

    def raise_at(self) -> float | None:
        """When a pending raise comes due (None when nothing is pending)."""
        return self.changed_at + RAISE_DELAY if self.computed > self.effective else None
