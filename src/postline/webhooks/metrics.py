"""What ``GET /metrics`` shows of the webhooks: counters per webhook, read from memory."""

from __future__ import annotations

from dataclasses import dataclass, fields

from postline.api.prometheus import Family


@dataclass
class HookCounters:
    posted_events: int = 0
    posted_batches: int = 0
    failures: int = 0  # posts that failed (each retry counts)
    dead_events: int = 0
    dead_batches: int = 0
    replayed_events: int = 0


_HELP = {
    "posted_events": "Events posted to the webhook and acknowledged with a 2xx.",
    "posted_batches": "Batches posted to the webhook and acknowledged with a 2xx.",
    "failures": "Webhook posts that failed (non-2xx, timeout, connection error, refused).",
    "dead_events": "Events that failed past max_age and went to the dead-letter store.",
    "dead_batches": "Batches that failed past max_age and went to the dead-letter store.",
    "replayed_events": "Events posted by replays (windows and dead letters).",
}


class WebhookMetrics:
    def __init__(self) -> None:
        self.hooks: dict[str, HookCounters] = {}

    def of(self, hook_id: str) -> HookCounters:
        counters = self.hooks.get(hook_id)
        if counters is None:
            counters = self.hooks[hook_id] = HookCounters()
        return counters

    def families(self) -> list[Family]:
        out = []
        for f in fields(HookCounters):
            samples = tuple(
                ((("webhook", hook_id),), float(getattr(c, f.name)))
                for hook_id, c in self.hooks.items()
            )
            out.append(Family(f"webhook_{f.name}_total", "counter", _HELP[f.name], samples))
        return out
