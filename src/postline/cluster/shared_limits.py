"""The I/O half of cluster-wide site limits: demand published and watched in JetStream KV.

The design (shares from the membership view, drop at once, raise late) is in
:mod:`postline.cluster.limits`; this module moves the demand sets through NATS and
keeps each site's share current:

* ``attach`` (synchronous, before the engine runs) swaps the engine's site table for
  one that gives every new site a :class:`~postline.cluster.limits.SiteShare`
  (``Destination.share``) before anything uses it, so the engine's code is unchanged.
  A new site starts at its reserve, or at 0 while the view is young: no site opens a
  connection before this node has read the others' demand and published its own.
* ``open`` finds or creates the bucket ``<prefix>_LIMITS`` (one key per member, history
  1, max age ``STALE``, replicated like the streams) and starts three tasks: the
  publisher (this node's wanted sites, at once on a change, else every ``BEAT``), the
  watcher (the others' sets, pushed by an ordered consumer) and the ticker (demand that
  ended, membership changes, stale entries, epoch rotation, fencing).
* Shares are recomputed only when an input changed; a raise is a timer; applying a
  share sets the site's token bucket to its part of the rate and, when it grew, starts
  sessions (nothing else would call ``start_sessions`` for work already waiting).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable

from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from postline.cluster.backends import ClusterSpool, ClusterStartError, prefix
from postline.cluster.limits import (
    BEAT,
    EPOCH,
    FENCE,
    HOLD,
    RAISE_DELAY,
    STALE,
    SiteShare,
    connection_share,
)
from postline.cluster.membership import Membership
from postline.config import Config
from postline.deliver.engine import Engine
from postline.deliver.session import start_sessions
from postline.schedule.destination import Destination
from postline.tasks import cancel_and_wait

log = logging.getLogger("postline.cluster")

TICK = 0.25  # seconds between looks at demand, membership, staleness and the epoch
OPEN_WAIT = 30.0  # seconds ``open`` retries while a fresh NATS cluster places the bucket
_NONE: tuple[frozenset[str], float] = (frozenset(), 0.0)


class _SharedSites(dict[str, Destination]):
    """The engine's site table: a site added gets its share before anything uses it."""

    def __init__(self, limits: SharedLimits) -> None:
        super().__init__()
        self._limits = limits

    def __setitem__(self, key: str, site: Destination) -> None:
        if site.share is None:
            self._limits.adopt(site)
        super().__setitem__(key, site)


class SharedLimits:
    def __init__(
        self, js: JetStreamContext, bucket: str, members: Membership, replicas: int, engine: Engine
    ) -> None:
        self._js = js
        self.bucket = bucket
        self._members = members
        self._replicas = replicas
        self._engine = engine
        self._kv: KeyValue | None = None
        self.shares: dict[str, tuple[SiteShare, Destination]] = {}
        self._wanted: dict[str, SiteShare] = {}  # by hashed key: the sites published
        self._others: dict[str, tuple[frozenset[str], float]] = {}  # member -> (sites, seen)
        self._live: frozenset[str] = frozenset()  # membership's view, as last reviewed
        self._counted: frozenset[str] = frozenset()  # others whose demand counts now
        self._view_at = time.monotonic()  # when the view last moved (see ``adopt``)
        self._epoch = self._current_epoch()
        self._synced = False  # the watcher has delivered the bucket's current contents
        self._published_at = float("-inf")  # monotonic time of the last successful put
        self._fenced = True
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- life cycle --------------------------------------------------------------------

    @classmethod
    def attach(cls, spool: ClusterSpool, engine: Engine, cfg: Config) -> SharedLimits:
        """Take over the engine's site table (call before the engine runs)."""
        assert cfg.cluster is not None
        bucket = f"{prefix(cfg.cluster)}_LIMITS"
        limits = cls(spool.spool.log.js, bucket, spool.members, cfg.cluster.stream_replicas, engine)
        engine.sites = _SharedSites(limits)
        return limits

    async def open(self) -> None:
        """Open (or create) the bucket and start publishing and watching."""
        deadline = time.monotonic() + OPEN_WAIT
        while True:
            try:
                self._kv = await self._bucket()
                break
            except Exception as exc:  # a fresh cluster placing its streams: wait it out
                if time.monotonic() > deadline:
                    msg = f"cannot open the KV bucket {self.bucket}: {exc}"
                    raise ClusterStartError(msg) from exc
                await asyncio.sleep(0.2)
        self._dirty.set()  # publish at once: this node is counted (wanting nothing yet)
        loop = asyncio.get_running_loop()
        for job in (self._publisher(), self._watcher(), self._ticker()):
            self._tasks.append(loop.create_task(job))

    async def _bucket(self) -> KeyValue:
        try:
            return await self._js.key_value(self.bucket)
        except NotFoundError:
            config = api.KeyValueConfig(
                bucket=self.bucket, history=1, ttl=STALE, replicas=self._replicas
            )
            return await self._js.create_key_value(config)

    async def close(self) -> None:
        await cancel_and_wait(*self._tasks)
        if self._kv is not None:
            with contextlib.suppress(Exception):
                await self._kv.delete(self._members.node)  # the others' shares rise now

    # -- sites -------------------------------------------------------------------------

    def adopt(self, site: Destination) -> None:
        """A site new to this node. Its reserve (limits.py) has been this node's all
        along in the others' eyes, so it holds from the start, unless the view moved
        within RAISE_DELAY (then it is a raise like any other)."""
        now = time.monotonic()
        shaping = site.shaping
        share = SiteShare(site.key, shaping.max_connections, shaping.max_message_rate,
                          time.monotonic, self._want)  # fmt: skip
        if now - self._view_at >= RAISE_DELAY:
            share.hold(self._computed(share))
        site.share = share
        self.shares[site.key] = (share, site)
        self._rate(share, site)

    def _needs_more(self, share: SiteShare, site: Destination) -> bool:
        """The node has more work for the site than its reserve serves (jobs waiting,
        sessions open, a lease coming): it wants a share. Below that it is idle to
        the others, and the site is not published (the long tail of quiet sites)."""
        work = site.ready.ready + site.sessions + (1 if site.leasing else 0)
        if work == 0:
            return False
        reserve = 0
        if not self._fenced and share.limit >= len(self._live | {self._members.node}):
            reserve = 1
        return work > reserve

    def _want(self, share: SiteShare) -> None:
        site = self.shares[share.key][1]
        if not self._needs_more(share, site):
            return  # the reserve does (or ``postline status`` asked, without work)
        share.wanted = True
        share.asked = time.monotonic()
        self._wanted[share.hashed] = share
        self._dirty.set()
        self._recompute([share])

    def _computed(self, share: SiteShare) -> int:
        """The share by the current view (0 while fenced)."""
        if self._fenced:
            return 0
        me = self._members.node
        wanting = {m for m in self._counted if share.hashed in self._others.get(m, _NONE)[0]}
        if share.wanted:
            wanting.add(me)
        return connection_share(share.limit, self._live, wanting, me, share.key, self._epoch)

    def _recompute(self, shares: Iterable[SiteShare]) -> None:
        now = time.monotonic()
        for share in shares:
            before = share.effective
            if share.update(self._computed(share), now):
                self._applied(share, before)
            self._schedule_raise(share, now)

    def _schedule_raise(self, share: SiteShare, now: float) -> None:
        """A timer for the share's pending raise (the loop's clock is time.monotonic)."""
        due = share.raise_at()
        handle = share.pending
        if isinstance(handle, asyncio.TimerHandle):
            if due is not None and handle.when() == due:
                return
            handle.cancel()
        share.pending = None
        if due is not None:
            share.pending = asyncio.get_running_loop().call_at(due, self._raise, share)

    def _raise(self, share: SiteShare) -> None:
        share.pending = None
        before = share.effective
        if share.raise_due(time.monotonic()):
            self._applied(share, before)
        else:
            self._schedule_raise(share, time.monotonic())

    def _applied(self, share: SiteShare, before: int) -> None:
        """The share in force moved: the site's rate follows; when it grew, more
        sessions may start for the work already waiting."""
        entry = self.shares.get(share.key)
        if entry is None:
            return
        site = entry[1]
        self._rate(share, site)
        log.debug(
            "site share changed",
            extra={"site": share.key, "connections": share.effective, "was": before},
        )
        if share.effective > before:
            start_sessions(self._engine, site)

    @staticmethod
    def _rate(share: SiteShare, site: Destination) -> None:
        """The site's token bucket refills at this node's part of the rate (kept as it
        was while the share is 0: no session may send then, and 0 means unlimited)."""
        rate = share.rate_now()
        if share.rate > 0 and rate > 0:
            site.bucket.set_rate(rate, max(1.0, rate))

    # -- the tasks ---------------------------------------------------------------------

    async def _publisher(self) -> None:
        """This node's wanted sites: at once on a change, every BEAT as the refresh."""
        assert self._kv is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), BEAT)
            self._dirty.clear()
            value = ",".join(sorted(self._wanted)).encode("ascii")
            try:
                await self._kv.put(self._members.node, value)
            except Exception as exc:  # NATS away: fenced after FENCE (the ticker)
                log.warning("publishing site demand failed", extra={"error": str(exc)})
                await asyncio.sleep(0.2)
                continue
            self._published_at = time.monotonic()

    async def _watcher(self) -> None:
        """The others' wanted sites, as the bucket's ordered consumer pushes them."""
        assert self._kv is not None
        while True:
            try:
                watcher = await self._kv.watchall()
                async for entry in watcher:
                    if entry is None:  # the bucket's current contents are in
                        self._synced = True
                        self._review(changed=True)
                        continue
                    if entry.key == self._members.node:
                        continue
                    if entry.operation in ("DEL", "PURGE"):
                        self._others.pop(entry.key, None)
                    else:
                        sites = frozenset(filter(None, (entry.value or b"").decode().split(",")))
                        old = self._others.get(entry.key)
                        self._others[entry.key] = (sites, time.monotonic())
                        if old is not None and old[0] == sites:
                            continue  # a refresh: same demand
                    self._review(changed=True)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a new watcher replays the current contents
                log.warning("watching site demand failed", extra={"error": str(exc)})
                await asyncio.sleep(1.0)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                self._tick()
            except Exception:  # must not end: the shares would freeze
                log.exception("site limits tick failed")

    def _tick(self) -> None:
        now = time.monotonic()
        ended = []
        for share in self._wanted.values():
            site = self.shares[share.key][1]
            if self._needs_more(share, site):
                share.asked = now
            elif now - share.asked > HOLD:
                ended.append(share)
        for share in ended:  # this node no longer wants the site: it keeps its reserve
            share.wanted = False
            del self._wanted[share.hashed]
            self._dirty.set()
        if ended:
            self._recompute(ended)
        stale = [m for m, (_, seen) in self._others.items() if now - seen > 3 * STALE]
        for member in stale:  # long gone (a new member name every run)
            del self._others[member]
        self._review()

    def _review(self, changed: bool = False) -> None:
        """Recompute every wanted site when a view input moved: another node's demand
        (``changed``), whose demand counts (live and fresh), the epoch, or whether this
        node is fenced."""
        now = time.monotonic()
        live = self._members.live
        counted = frozenset(
            m for m, (_, seen) in self._others.items() if m in live and now - seen <= STALE
        )
        epoch = self._current_epoch()
        fenced = not self._synced or now - self._published_at > FENCE
        if fenced != self._fenced:
            if fenced:
                log.warning("site limits fenced: this node holds no share of any site")
            else:
                log.info("site limits in force", extra={"node": self._members.node})
        view = (live, counted, epoch, fenced)
        if view != (self._live, self._counted, self._epoch, self._fenced):
            self._live, self._counted, self._epoch, self._fenced = view
            self._view_at = now
            self._recompute([share for share, _ in self.shares.values()])  # reserves too
        elif changed:
            self._recompute(list(self._wanted.values()))

    @staticmethod
    def _current_epoch() -> int:
        return int(time.time() // EPOCH)
