"""The restart backoff of the node's workers (child.py)."""

from __future__ import annotations

from postline.child import RESTART_MAX, RESTART_MIN, Backoff


def test_doubles_while_crashing_and_resets_after_a_long_run() -> None:
    b = Backoff()
    quick = [b.after(0.1) for _ in range(7)]
    assert quick == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert quick[0] == RESTART_MIN and quick[-1] == RESTART_MAX
    assert b.after(10 * RESTART_MAX + 1) == RESTART_MIN  # it had run for a while
    assert b.after(0.1) == 2.0
