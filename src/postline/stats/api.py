"""The statistics API, as SendGrid's OpenAPI describes it (tsg_stats_v3.json).

  GET /v3/stats  ?start_date (required) &end_date &aggregated_by &limit &offset
      → [{"date", "stats": [{"metrics": {...}}]}]                       scope stats.global.read
  GET /v3/categories/stats  ?start_date &end_date &categories (1..10, repeated) &aggregated_by
      → [{"date", "stats": [{"type": "category", "name", "metrics"}]}]  categories.stats.read
  GET /v3/categories/stats/sums  ?start_date &end_date &sort_by_metric (delivered)
      &sort_by_direction (desc) &limit (5) &offset &aggregated_by
      → {"date": start_date, "stats": [{"type": "category", "name", "metrics"}]}
                                                                      categories.stats.sums.read

Dates are ``YYYY-MM-DD`` (UTC days); ``end_date`` defaults to today and is inclusive. Every
period of the range is in the answer, with zeros where nothing happened; every metric is in
every entry. ``limit``/``offset`` of /v3/stats page through the periods. The counts come
from the rollups (store.py), never from raw events. Bounds: a range of at most
:data:`MAX_DAYS` days, and at most :data:`MAX_ENTRIES` entries (periods × categories) in
one answer; a bad value is a 400 naming its parameter, in SendGrid's error body.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl

import msgspec

from postline.api.app import App
from postline.api.errors import http_error
from postline.api.requests import int_param, key_tenant
from postline.api.types import Request, Response
from postline.stats import dates
from postline.stats.metrics import METRIC_SET, METRICS
from postline.stats.store import Row, StatsStore

MAX_DAYS = 3660  # ten years of days in one query
MAX_ENTRIES = 4000  # periods × categories in one answer (~1.6 MB of JSON)
MAX_CATEGORIES = 10  # SendGrid: "up to 10 different categories"
MAX_CATEGORY_LEN = 255  # SendGrid's limit on a category name
MAX_SUMS_LIMIT = 500
Metrics = dict[str, int]

_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class Range:
    start: int  # day numbers, both inclusive
    end: int
    aggregated_by: str

    def periods(self) -> list[int]:
        return dates.periods(self.start, self.end, self.aggregated_by)


class Params:
    """A query string: first value of each name, every value of ``categories``."""

    def __init__(self, query: str) -> None:
        self.first: dict[str, str] = {}
        self.categories: list[str] = []
        for name, value in parse_qsl(query, keep_blank_values=True):
            self.first.setdefault(name, value)
            if name == "categories":
                self.categories.append(value)

    def date(self, name: str, default: int | None = None) -> int:
        raw = self.first.get(name)
        if raw is None and default is not None:
            return default
        if raw is None or not raw.strip():
            raise http_error(400, f"{name} is required (YYYY-MM-DD)", name)
        day = dates.parse_date(raw.strip())
        if day is None:
            raise http_error(400, f"{name} must be a date in the form YYYY-MM-DD", name)
        return day

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        return int_param(self.first, name, default, low, high)

    def choice(self, name: str, allowed: Sequence[str], default: str) -> str:
        value = self.first.get(name, default)
        if value not in allowed:
            raise http_error(400, f"{name} must be one of: {', '.join(allowed)}", name)
        return value

    def range(self, today: int) -> Range:
        start = self.date("start_date")
        end = self.date("end_date", default=max(start, today))
        if end < start:
            raise http_error(400, "end_date must not be before start_date", "end_date")
        if end - start >= MAX_DAYS:
            raise http_error(400, f"the range may span at most {MAX_DAYS} days", "end_date")
        return Range(start, end, self.choice("aggregated_by", dates.AGGREGATIONS, "day"))

    def category_names(self) -> list[str]:
        names = list(dict.fromkeys(self.categories))
        if not names:
            raise http_error(400, "categories is required: name 1 to 10 categories", "categories")
        if len(names) > MAX_CATEGORIES:
            raise http_error(400, f"at most {MAX_CATEGORIES} categories", "categories")
        for name in names:
            if not name or len(name) > MAX_CATEGORY_LEN:
                msg = f"a category is 1 to {MAX_CATEGORY_LEN} characters"
                raise http_error(400, msg, "categories")
        return names


# -- shaping the rows ----------------------------------------------------------------------


def zero() -> Metrics:
    return dict.fromkeys(METRICS, 0)


def by_period(rows: list[Row], rng: Range, labels: list[int]) -> dict[tuple[str, int], Metrics]:
    """(category, period label) → metrics, zeros wherever no row fell."""
    out: dict[tuple[str, int], Metrics] = {}
    for category, day, metric, n in rows:
        if metric not in METRIC_SET:
            continue
        key = (category, dates.bucket(day, rng.start, rng.aggregated_by))
        metrics = out.get(key)
        if metrics is None:
            metrics = out[key] = zero()
        metrics[metric] += n
    return out


def sums(rows: list[Row]) -> dict[str, Metrics]:
    out: dict[str, Metrics] = {}
    for category, _day, metric, n in rows:
        if metric in METRIC_SET:
            out.setdefault(category, zero())[metric] += n
    return out


def _check_size(entries: int) -> None:
    if entries > MAX_ENTRIES:
        msg = (
            f"the answer would hold {entries} entries (periods x categories), at most"
            f" {MAX_ENTRIES}: narrow the dates, page with limit, or aggregate by week or month"
        )
        raise http_error(400, msg, "aggregated_by")


def _json(body: object) -> Response:
    return Response(200, _encode(body))


class StatsApi:
    def __init__(self, store: StatsStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    def _today(self) -> int:
        return dates.day_of(self._clock())

    async def global_stats(self, req: Request) -> Response:
        p = Params(req.query)
        rng = p.range(self._today())
        labels = rng.periods()
        offset = p.integer("offset", 0, 0, 2**62)
        labels = labels[offset : offset + p.integer("limit", len(labels), 1, MAX_ENTRIES)]
        _check_size(len(labels))
        if not labels:
            return _json([])
        last = dates.periods(labels[-1], rng.end, rng.aggregated_by)
        end = last[1] - 1 if len(last) > 1 else rng.end
        rows = await self._store.query(key_tenant(req), [""], (labels[0], end))
        got = by_period(rows, rng, labels)
        return _json(
            [{"date": dates.label(d), "stats": [{"metrics": got.get(("", d)) or zero()}]}
             for d in labels]
        )  # fmt: skip

    async def category_stats(self, req: Request) -> Response:
        p = Params(req.query)
        rng = p.range(self._today())
        names = p.category_names()
        labels = rng.periods()
        _check_size(len(labels) * len(names))
        rows = await self._store.query(key_tenant(req), names, (rng.start, rng.end))
        got = by_period(rows, rng, labels)
        return _json([{"date": dates.label(d), "stats": [
            {"type": "category", "name": n, "metrics": got.get((n, d)) or zero()} for n in names
        ]} for d in labels])  # fmt: skip

    async def category_sums(self, req: Request) -> Response:
        p = Params(req.query)
        rng = p.range(self._today())
        metric = p.choice("sort_by_metric", METRICS, "delivered")
        desc = p.choice("sort_by_direction", ("desc", "asc"), "desc") == "desc"
        limit = p.integer("limit", 5, 1, MAX_SUMS_LIMIT)
        offset = p.integer("offset", 0, 0, 2**62)
        page = (limit, offset, desc)
        rows = await self._store.ranked(key_tenant(req), (rng.start, rng.end), metric, page)
        got = sums(rows)
        sign = -1 if desc else 1
        order = sorted(got, key=lambda name: (sign * got[name][metric], name))
        stats = [{"type": "category", "name": n, "metrics": got[n]} for n in order]
        return _json({"date": dates.label(rng.start), "stats": stats})


def register(app: App, store: StatsStore, clock: Callable[[], float] = time.time) -> None:
    api = StatsApi(store, clock)
    app.add("GET", "/v3/stats", api.global_stats, scope="stats.global.read")
    app.add("GET", "/v3/categories/stats", api.category_stats, scope="categories.stats.read")
    sums_scope = "categories.stats.sums.read"
    app.add("GET", "/v3/categories/stats/sums", api.category_sums, scope=sums_scope)
