"""The JetStream spool's index (backends/jetstream/index.py): the per-queue heaps and
counts answer ``due``, ``next_due``, ``oldest`` and ``leased`` exactly as a scan of the
whole queue does, whatever mix of new states, changes, late (older) states and tombstones
it was fed."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from postline.backends.jetstream.index import Entry, Index
from postline.backends.jetstream.records import DeliveryState

QUEUES = [("t1", "a.example"), ("t1", "b.example"), ("t2", "a.example")]


def state(did: int, queue: int, due: float) -> DeliveryState:
    tenant, domain = QUEUES[queue]
    created, leased = float(did % 7), int(due) % 3 == 0  # a delivery keeps its created_at
    return DeliveryState(did, did, did, tenant, f"r{did}@{domain}", domain, due, 1e9, created,
                         0, leased, f"m{did}")  # fmt: skip


# (delivery id, queue, due time or None for a tombstone, sequence step: <0 = a late write)
ops = st.lists(
    st.tuples(
        st.integers(0, 30),
        st.integers(0, len(QUEUES) - 1),
        st.one_of(st.none(), st.integers(0, 20).map(float)),
        st.integers(-3, 3),
    ),
    max_size=200,
)


def scan(index: Index, tenant: str, domain: str, now: float) -> list[Entry]:
    entries = [e for e in index.queue(tenant, domain) if e.state.due_at <= now]
    return sorted(entries, key=lambda e: (e.state.due_at, e.state.delivery_id))


@settings(max_examples=300, deadline=None)
@given(ops, st.integers(0, 20).map(float), st.integers(1, 40))
def test_heap_answers_as_a_scan_does(script: list[tuple[int, int, float | None, int]],
                                     now: float, n: int) -> None:  # fmt: skip
    index = Index()
    seq = 100
    queue_of: dict[int, int] = {}  # a delivery stays in the queue it was made in
    for did, queue, due, step in script:
        seq += 1
        at = seq + step  # a step below 0 replays an older write: ignored if one is newer
        q = queue_of.setdefault(did, queue)
        index.apply(did, at, f"s.{did}", None if due is None else state(did, q, due))
    for tenant, domain in QUEUES:
        want = scan(index, tenant, domain, now)
        assert index.due(tenant, domain, now, n) == want[:n]
        assert index.due(tenant, domain, now, len(want) + 1) == want  # asked again: unchanged
        skip = {e.state.delivery_id for e in want[::2]}
        assert (
            index.due(tenant, domain, now, n, skip)
            == [e for e in want if e.state.delivery_id not in skip][:n]
        )
        dues = [e.state.due_at for e in index.queue(tenant, domain)]
        assert index.next_due(tenant, domain) == (min(dues) if dues else None)
        born = [e.state.created_at for e in index.queue(tenant, domain)]
        assert index.oldest(tenant, domain) == (min(born) if born else None)
        leased = sum(1 for e in index.queue(tenant, domain) if e.state.leased)
        assert index.leased.get((tenant, domain), 0) == leased


def test_a_delivery_changed_many_times_keeps_the_heap_small() -> None:
    index = Index()
    for seq in range(1, 10_000):
        index.apply(7, seq, "s.7", state(7, 0, float(seq % 50)))
    assert len(index._due[QUEUES[0]]) <= 2 * 1 + 64 + 1
    assert [e.state.delivery_id for e in index.due(*QUEUES[0], 100.0, 10)] == [7]
    index.apply(7, 10_000, "s.7", None)  # settled: the queue and its heap go
    assert QUEUES[0] not in index._due and index.next_due(*QUEUES[0]) is None
