"""Days and periods of the statistics API (pure).

Days are UTC day numbers (days since 1970-01-01), the rollups' key. A query's range is
cut into periods by ``aggregated_by``: ``day``; ``week`` (ISO weeks, Monday to Sunday);
``month`` (calendar months). A period is labelled with its first day within the range, so
the first period of a range that starts mid-week or mid-month carries ``start_date``
itself and the next ones their Monday / first of the month (SendGrid's month example:
"2015-10-01", "2015-11-01").
"""

from __future__ import annotations

import datetime as dt
import re

EPOCH = dt.date(1970, 1, 1)
AGGREGATIONS = ("day", "week", "month")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def parse_date(text: str) -> int | None:
    """``YYYY-MM-DD`` → its day number, or None when it is not a real date in that form."""
    if not _DATE.fullmatch(text):
        return None
    try:
        return (dt.date.fromisoformat(text) - EPOCH).days
    except ValueError:
        return None


def day_of(ts: float) -> int:
    return int(ts // 86400)


def label(day: int) -> str:
    return (EPOCH + dt.timedelta(days=day)).isoformat()


def period_start(day: int, aggregated_by: str) -> int:
    """The first day of the period holding ``day`` (unbounded by any range)."""
    if aggregated_by == "week":
        return day - (EPOCH + dt.timedelta(days=day)).weekday()
    if aggregated_by == "month":
        date = EPOCH + dt.timedelta(days=day)
        return (date.replace(day=1) - EPOCH).days
    return day


def periods(start: int, end: int, aggregated_by: str) -> list[int]:
    """The label day of every period of [start, end], in order."""
    out: list[int] = []
    day = start
    while day <= end:
        out.append(day)
        day = _next_period(day, aggregated_by)
    return out


def _next_period(day: int, aggregated_by: str) -> int:
    if aggregated_by == "week":
        return period_start(day, "week") + 7
    if aggregated_by == "month":
        date = EPOCH + dt.timedelta(days=day)
        nxt = dt.date(date.year + date.month // 12, date.month % 12 + 1, 1)
        return (nxt - EPOCH).days
    return day + 1


def bucket(day: int, start: int, aggregated_by: str) -> int:
    """The label of the period of ``day`` in a range that starts at ``start``."""
    return max(start, period_start(day, aggregated_by))
