from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from postline.schedule.queues import QueueIndex


def test_arm_keeps_earliest_and_pop_due_respects_time() -> None:
    idx = QueueIndex()
    idx.arm(("t", "a.com"), 10.0)
    idx.arm(("t", "a.com"), 5.0)
    idx.arm(("t", "a.com"), 7.0)
    idx.arm(("t", "b.com"), 20.0)
    assert idx.next_time() == 5.0
    assert idx.pop_due(4.0) == []
    assert idx.pop_due(5.0) == [("t", "a.com")]
    assert idx.next_time() == 20.0
    assert len(idx) == 1


def test_reset_can_move_later_or_remove() -> None:
    idx = QueueIndex()
    idx.arm(("t", "a.com"), 1.0)
    idx.reset(("t", "a.com"), 30.0)
    assert idx.pop_due(10.0) == []
    assert idx.next_time() == 30.0
    idx.reset(("t", "a.com"), None)
    assert idx.next_time() is None and len(idx) == 0


@given(
    st.lists(st.tuples(st.sampled_from("abcde"), st.floats(0, 100)), max_size=60), st.floats(0, 100)
)
def test_pop_due_returns_exactly_the_due_queues(ops: list[tuple[str, float]], now: float) -> None:
    idx = QueueIndex()
    earliest: dict[str, float] = {}
    for name, when in ops:
        idx.arm(("t", name), when)
        earliest[name] = min(earliest.get(name, when), when)
    due = sorted(q[1] for q in idx.pop_due(now))
    assert due == sorted(n for n, w in earliest.items() if w <= now)
    rest = [w for n, w in earliest.items() if w > now]
    assert idx.next_time() == (min(rest) if rest else None)
