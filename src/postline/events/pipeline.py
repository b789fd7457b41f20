"""The event pipeline of a node: its components (webhooks, activity, stats) and their
consumers, wired off the mail path.

A component is built by a factory ``component(ctx)`` in its own package (``postline.
webhooks``, ``postline.activity``, ``postline.stats``); it opens its store, adds its
consumers to ``ctx.runners`` in ``start``, adds its HTTP routes, reports its metrics and
closes. The pipeline starts them in order (activity first: the webhooks' replay reads
it through ``ctx.replay_source``), runs retention over the log (events/retention.py) and
reports every consumer's lag.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from postline.api.app import App
from postline.api.prometheus import Family
from postline.config import Config
from postline.events.consumer import RunnerSet
from postline.events.log import EventLog
from postline.events.retention import Retention
from postline.model.events import EventRecord


class ReplaySource(Protocol):
    """Past events of a tenant by time window (the activity store keeps them for
    ``activity.retention``; the log only for ``events.retention``)."""

    def window(
        self,
        tenant: str,
        start: float,
        end: float,
        types: frozenset[str] | None,
        categories: frozenset[str] | None,
    ) -> AsyncIterator[list[EventRecord]]:
        """Batches of the tenant's events with start <= ts < end, oldest first, of the
        given types / with one of the given categories (None: all)."""
        ...


@dataclass
class PipelineContext:
    cfg: Config
    data_dir: Path
    events: EventLog
    runners: RunnerSet
    clock: Callable[[], float] = time.time
    replay_source: ReplaySource | None = None  # set by the activity component when enabled
    extras: dict[str, object] = field(default_factory=dict)


class Component(Protocol):
    name: str

    async def start(self) -> None:
        """Open the store and add the consumers to ``ctx.runners``."""
        ...

    def routes(self, app: App) -> None: ...

    def families(self) -> list[Family]:
        """Metrics read from memory (no I/O)."""
        ...

    async def close(self) -> None: ...


def _factories() -> list[Callable[[PipelineContext], Component | None]]:
    from postline.activity.component import component as activity
    from postline.stats.component import component as stats
    from postline.webhooks.component import component as webhooks

    return [activity, stats, webhooks]


class Pipeline:
    def __init__(
        self,
        cfg: Config,
        events: EventLog,
        clock: Callable[[], float] = time.time,
        *,
        adopted: bool = False,
    ):
        """``adopted``: the consumers of a lost datacenter's log, run over this
        datacenter's mirror of it (cluster/adopted.py): no retention on that log, no
        routes, nothing of this node's own state touched."""
        self.runners = RunnerSet(events, clock)
        self.ctx = PipelineContext(cfg, Path(cfg.data_dir), events, self.runners, clock)
        self.ctx.extras["adopted"] = adopted
        self.components: list[Component] = []
        self.retention = (
            None if adopted
            else Retention(events, self.runners, float(cfg.events.retention), clock)
        )  # fmt: skip
        self._head = 0

    async def start(self, app: App | None) -> None:
        """Start the components (their routes on ``app`` unless None)."""
        for factory in _factories():
            comp = factory(self.ctx)
            if comp is None:
                continue
            await comp.start()
            self.components.append(comp)
            if app is not None:
                comp.routes(app)
        if self.retention is not None:
            self.retention.start()

    def wake(self) -> None:
        self.runners.wake()

    async def families(self) -> list[Family]:
        head = await self.ctx.events.head()
        now = self.ctx.clock()
        runners = self.runners.all()
        lag_events = tuple(
            ((("consumer", r.name),), float(max(0, head - r.state.offset))) for r in runners
        )
        lag_seconds = tuple(((("consumer", r.name),), r.lag_seconds(now)) for r in runners)
        consumed = tuple(((("consumer", r.name),), float(r.state.consumed)) for r in runners)
        errors = tuple(((("consumer", r.name),), float(r.state.errors)) for r in runners)
        fams = [
            Family.one("event_log_head", "gauge", "Offset of the newest event appended.", head),
            Family(
                "consumer_lag_events",
                "gauge",
                "Events appended and not yet handled by the consumer.",
                lag_events,
            ),
            Family(
                "consumer_lag_seconds",
                "gauge",
                "Age of the oldest event the consumer has read and not yet handled.",
                lag_seconds,
            ),
            Family(
                "consumer_events_total",
                "counter",
                "Events the consumer handled since the node started.",
                consumed,
            ),
            Family(
                "consumer_errors_total",
                "counter",
                "Consumer batches that failed and were retried.",
                errors,
            ),
            Family.one(
                "event_log_pruned_total",
                "counter",
                "Events removed from the log by retention.",
                0 if self.retention is None else self.retention.pruned,
            ),
        ]
        for comp in self.components:
            fams += comp.families()
        return fams

    async def close(self) -> None:
        if self.retention is not None:
            await self.retention.stop()
        await self.runners.close()
        for comp in reversed(self.components):
            await comp.close()
        self.components.clear()
