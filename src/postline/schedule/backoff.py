"""Retry timing after a temporary failure: exponential backoff with jitter, bounded by age.

Strategy: the delay doubles from ``retry_min`` with each failed attempt and is capped at
``retry_max`` — the classic MTA schedule (Postfix's deferred queue backs off from
``minimal_backoff_time`` 300 s to ``maximal_backoff_time`` 4000 s; KumoMTA's
``retry_interval`` of 20 min doubles per attempt up to ``max_retry_interval``).

Decisions (documented here, tested in ``tests/unit/test_backoff.py``):

* **Attempt numbering.** ``attempt`` counts the attempts already made, so the delay after
  the first failure (``attempt=1``) is ``retry_min``; after the n-th it is
  ``retry_min * 2**(n-1)``, capped at ``retry_max``.
* **Jitter keeps both settings as hard bounds.** The delay is drawn uniformly from
  ``[max(retry_min, base*(1-J)), min(retry_max, base*(1+J))]`` with ``J = 0.2``: ±20 %
  around the doubling schedule, so messages deferred together do not retry together
  (thundering herd), yet no delay is ever shorter than ``retry_min`` (the first retry is
  never early) or longer than ``retry_max`` (the ceiling is a promise). Drawing inside
  the clamped interval, rather than clamping a draw, leaves no pile of retries exactly
  at the bounds. Both ends of the interval are non-decreasing in ``attempt``.
* **Expiry.** A message lives ``max_age`` from ``created_at`` (SendGrid: 72 h). If the
  next retry would fall after that, the expiry instant itself becomes one final attempt —
  the message gets every chance it was promised — provided it is at least ``retry_min``
  away; otherwise ``next_attempt_at`` returns ``None`` and the caller expires the message
  now (``Expired`` with the last temporary failure). Every gap between attempts therefore
  stays within ``[retry_min, retry_max]``, and a message expires at most ``retry_min``
  before its ``max_age`` and never after it. (Postfix instead bounces at the first failed
  attempt after ``maximal_queue_lifetime``, up to one backoff late.)
"""

from __future__ import annotations

import random

JITTER = 0.2  # ± fraction of the doubling schedule
_MAX_DOUBLINGS = 60  # 2**60 * any sane retry_min is far beyond any retry_max

_RANDOM = random.Random()


def base_delay(attempt: int, retry_min: float, retry_max: float) -> float:
    """The un-jittered delay after ``attempt`` failed attempts: doubling, capped."""
    _check(attempt, retry_min, retry_max)
    doublings = min(attempt - 1, _MAX_DOUBLINGS)
    return min(retry_max, retry_min * 2.0**doublings)


def delay_bounds(
    attempt: int, retry_min: float, retry_max: float, jitter: float = JITTER
) -> tuple[float, float]:
    """The interval ``retry_delay`` draws from (see the module docstring)."""
    base = base_delay(attempt, retry_min, retry_max)
    low = max(retry_min, base * (1.0 - jitter))
    high = min(retry_max, base * (1.0 + jitter))
    return low, max(low, high)


def retry_delay(
    attempt: int,
    retry_min: float,
    retry_max: float,
    rand: random.Random | None = None,
    *,
    jitter: float = JITTER,
) -> float:
    """Seconds to wait after ``attempt`` failed attempts; within [retry_min, retry_max]."""
    low, high = delay_bounds(attempt, retry_min, retry_max, jitter)
    draw = low + (high - low) * (rand or _RANDOM).random()
    return min(high, draw)


def next_attempt_at(
    now: float,
    attempts: int,
    created_at: float,
    max_age: float,
    retry_min: float,
    retry_max: float,
    rand: random.Random | None = None,
    *,
    jitter: float = JITTER,
) -> float | None:
    """When to try again after ``attempts`` failed attempts, or ``None``: expire now.

    The expiry instant ``created_at + max_age`` is used as a final attempt when the
    regular retry would land after it and it is at least ``retry_min`` away.
    """
    expires_at = created_at + max_age
    due = now + retry_delay(attempts, retry_min, retry_max, rand, jitter=jitter)
    if due <= expires_at:
        return due
    if expires_at - now >= retry_min:
        return expires_at
    return None


def _check(attempt: int, retry_min: float, retry_max: float) -> None:
    if attempt < 1:
        raise ValueError(f"attempt counts attempts already made, so it is >= 1 (got {attempt})")
    if retry_min <= 0:
        raise ValueError(f"retry_min must be positive (got {retry_min})")
    if retry_max < retry_min:
        raise ValueError(f"retry_max ({retry_max}) is below retry_min ({retry_min})")
