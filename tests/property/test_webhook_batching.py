"""Batches of a webhook post: every event once, in order, within the bounds."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from postline.model.events import EventRecord
from postline.webhooks.batching import body, size_of, split


def _event(i: int, pad: int) -> tuple[int, EventRecord]:
    data = json.dumps({"sg_event_id": str(i), "pad": "x" * pad}, separators=(",", ":"))
    return i, EventRecord(float(i), "t", "processed", "a@b.c", "m", data.encode())


@given(
    pads=st.lists(st.integers(0, 300), max_size=60),
    max_events=st.integers(1, 10),
    max_bytes=st.integers(2, 800),
)
def test_split_keeps_order_and_bounds(pads: list[int], max_events: int, max_bytes: int) -> None:
    events = [_event(i + 1, p) for i, p in enumerate(pads)]
    batches = list(split(events, max_events, max_bytes))
    assert [item for b in batches for item in b] == events
    for batch in batches:
        assert 1 <= len(batch) <= max_events
        assert size_of(batch) == len(body(batch))
        assert len(body(batch)) <= max_bytes or len(batch) == 1  # a big event goes alone
        decoded = json.loads(body(batch))
        assert [e["sg_event_id"] for e in decoded] == [str(o) for o, _ in batch]


@given(pads=st.lists(st.integers(0, 50), min_size=1, max_size=30))
def test_a_batch_is_full_before_the_next_starts(pads: list[int]) -> None:
    events = [_event(i + 1, p) for i, p in enumerate(pads)]
    batches = list(split(events, 4, 10**9))
    assert all(len(b) == 4 for b in batches[:-1])
