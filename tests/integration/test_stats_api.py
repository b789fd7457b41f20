"""The statistics API on a real node (tsg_stats_v3.json): mail delivered to the fake MX,
bounced, blocked and dropped through suppressions shows up in GET /v3/stats, by category
and in the sums, per day, week and month; tenants are isolated, scopes checked, bad input
is a 400 naming its parameter, and a restart whose log offset was lost counts nothing twice.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tests.conftest import call
from tests.integration.test_delivery import fast_config, send

from postline.stats.api import MAX_CATEGORIES, MAX_DAYS, MAX_ENTRIES
from postline.stats.metrics import METRICS
from postline.testing.fake_smtp import FakeSmtpServer, running_in_thread
from postline.testing.node import NodeProcess
from postline.testing.scrape import scrape

Metrics = dict[str, int]


def utc_today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def days_around(n: int = 1) -> str:
    """start_date/end_date of a window around today (a test may cross midnight UTC)."""
    t = utc_today()
    return f"start_date={t - dt.timedelta(days=n)}&end_date={t + dt.timedelta(days=n)}"


def get(node: NodeProcess, key: str, path: str) -> Any:
    r = call(node.http_port, "GET", path, key=key)
    assert r.status == 200, r.body
    return r.json()


def total(periods: list[dict[str, Any]], name: str | None = None) -> Metrics:
    out = dict.fromkeys(METRICS, 0)
    for p in periods:
        for s in p["stats"]:
            if name is None or s.get("name") == name:
                assert list(s["metrics"]) == list(METRICS)
                for m, n in s["metrics"].items():
                    out[m] += n
    return out


def nonzero(m: Metrics) -> Metrics:
    return {k: v for k, v in m.items() if v}


def wait_stats(
    node: NodeProcess, key: str, done: Callable[[Metrics], bool], timeout: float = 20
) -> Metrics:
    deadline = time.monotonic() + timeout
    while True:
        got = total(get(node, key, f"/v3/stats?{days_around()}"))
        if done(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


@pytest.fixture(scope="module")
def mx() -> Iterator[FakeSmtpServer]:
    with running_in_thread(FakeSmtpServer()) as server:
        yield server


@pytest.fixture(scope="module")
def node(mx: FakeSmtpServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    proc = NodeProcess(tmp_path_factory.mktemp("stats"), fast_config(mx.port))
    proc.start()
    yield proc
    proc.stop()


def test_delivered_bounced_blocked_and_dropped_mail_in_the_stats(node: NodeProcess) -> None:
    key = node.create_key(tenant="mail")
    send(node, key, "bob@example.com", "carol@example.com", categories=["news"])
    send(node, key, "550-gone@example.com", "554-policy@example.com", categories=["promo"])
    got = wait_stats(node, key, lambda m: m["delivered"] + m["bounces"] + m["blocks"] >= 4)
    assert nonzero(got) == {
        "processed": 4, "requests": 4, "delivered": 2, "bounces": 1, "blocks": 1,
    }, node.log_tail()  # fmt: skip
    # The hard bounce suppressed the address; a global unsubscribe suppresses another.
    r = call(node.http_port, "POST", "/v3/asm/suppressions/global", key=key,
             body={"recipient_emails": ["quit@example.com"]})  # fmt: skip
    assert r.status == 201, r.body
    send(node, key, "550-gone@example.com", "quit@example.com", "dave@example.com",
         categories=["news"])  # fmt: skip
    got = wait_stats(node, key, lambda m: m["delivered"] >= 3 and m["requests"] >= 7)
    assert nonzero(got) == {
        "processed": 5, "requests": 7, "delivered": 3, "bounces": 1, "blocks": 1,
        "bounce_drops": 1, "unsubscribe_drops": 1,
    }  # fmt: skip

    # Per day: every day of the range present, today's counts on today only.
    today = str(utc_today())
    days = get(node, key, f"/v3/stats?start_date={today}&end_date={today}")
    if len(days) == 1 and total(days)["processed"] == 5:  # not across a UTC midnight
        assert days[0]["date"] == today and list(days[0]["stats"][0]) == ["metrics"]
    long = get(node, key, f"/v3/stats?start_date={utc_today() - dt.timedelta(days=9)}")
    assert [d["date"] for d in long][-1] in (today, str(utc_today()))
    assert len(long) >= 10 and total(long) == got
    assert sum(1 for d in long if any(d["stats"][0]["metrics"].values())) <= 2

    # By category: the requested ones, in order, zeros for one never used.
    cats = get(node, key, f"/v3/categories/stats?{days_around()}"
               "&categories=news&categories=promo&categories=never")  # fmt: skip
    assert all([s["name"] for s in p["stats"]] == ["news", "promo", "never"] for p in cats)
    assert all(s["type"] == "category" for p in cats for s in p["stats"])
    assert nonzero(total(cats, "news")) == {
        "processed": 3, "requests": 5, "delivered": 3, "bounce_drops": 1, "unsubscribe_drops": 1,
    }  # fmt: skip
    assert nonzero(total(cats, "promo")) == {
        "processed": 2, "requests": 2, "bounces": 1, "blocks": 1,
    }  # fmt: skip
    assert nonzero(total(cats, "never")) == {}

    # Sums: every category ranked by a metric, paged.
    sums = get(node, key, f"/v3/categories/stats/sums?{days_around()}")
    assert sums["date"] == str(utc_today() - dt.timedelta(days=1))
    assert [s["name"] for s in sums["stats"]] == ["news", "promo"]  # delivered 3 > 0
    assert sums["stats"][0]["metrics"]["delivered"] == 3
    asc = get(node, key, f"/v3/categories/stats/sums?{days_around()}"
              "&sort_by_metric=bounces&sort_by_direction=asc&limit=1")  # fmt: skip
    assert [s["name"] for s in asc["stats"]] == ["news"]
    page2 = get(node, key, f"/v3/categories/stats/sums?{days_around()}&limit=1&offset=1")
    assert [s["name"] for s in page2["stats"]] == ["promo"]
    assert nonzero(page2["stats"][0]["metrics"])["bounces"] == 1

    # The consumer's metrics.
    fams = scrape(node.http_port)
    assert fams["stats_events_counted"] >= 11
    assert fams["stats_rollup_rows"] >= 1


def test_week_and_month_periods(node: NodeProcess) -> None:
    key = node.create_key(tenant="periods")
    send(node, key, "w1@example.com", "w2@example.com")
    wait_stats(node, key, lambda m: m["delivered"] >= 2)
    today = utc_today()
    start = today - dt.timedelta(days=70)
    weeks = get(node, key, f"/v3/stats?start_date={start}&end_date={today}&aggregated_by=week")
    labels = [dt.date.fromisoformat(w["date"]) for w in weeks]
    assert labels[0] == start and all(d.weekday() == 0 for d in labels[1:])
    assert len(labels) in (11, 12) and total(weeks)["delivered"] == 2
    months = get(node, key, f"/v3/stats?start_date={start}&aggregated_by=month")
    labels = [dt.date.fromisoformat(m["date"]) for m in months]
    assert labels[0] == start and all(d.day == 1 for d in labels[1:])
    assert labels[-1] == today.replace(day=1) and total(months)["delivered"] == 2
    assert nonzero(months[-1]["stats"][0]["metrics"])["delivered"] == 2
    # limit/offset page through the periods of /v3/stats.
    page = get(node, key, f"/v3/stats?start_date={start}&aggregated_by=week&limit=2&offset=1")
    assert [p["date"] for p in page] == [w["date"] for w in weeks[1:3]]
    assert get(node, key, f"/v3/stats?start_date={start}&offset=1000") == []


def test_tenants_see_only_their_own_stats(node: NodeProcess) -> None:
    one, two = node.create_key(tenant="iso-one"), node.create_key(tenant="iso-two")
    send(node, one, "a1@example.com", "a2@example.com", "a3@example.com", categories=["shared"])
    send(node, two, "b1@example.com", categories=["shared"])
    got_one = wait_stats(node, one, lambda m: m["delivered"] >= 3)
    got_two = wait_stats(node, two, lambda m: m["delivered"] >= 1)
    assert (got_one["processed"], got_two["processed"]) == (3, 1)
    cats = get(node, two, f"/v3/categories/stats?{days_around()}&categories=shared")
    assert total(cats)["delivered"] == 1
    sums = get(node, two, f"/v3/categories/stats/sums?{days_around()}")
    assert [(s["name"], s["metrics"]["processed"]) for s in sums["stats"]] == [("shared", 1)]
    fresh = node.create_key(tenant="iso-none")
    assert total(get(node, fresh, f"/v3/stats?{days_around()}")) == dict.fromkeys(METRICS, 0)
    assert get(node, fresh, f"/v3/categories/stats/sums?{days_around()}")["stats"] == []


def test_scopes(node: NodeProcess) -> None:
    q = f"?{days_around()}&categories=x"
    paths = {
        "stats.global.read": "/v3/stats",
        "categories.stats.read": "/v3/categories/stats",
        "categories.stats.sums.read": "/v3/categories/stats/sums",
    }
    for scope, path in paths.items():
        key = node.create_key(scopes=scope, tenant="scoped")
        for other in paths.values():
            status = call(node.http_port, "GET", other + q, key=key).status
            assert status == (200 if other == path else 403), (scope, other)
    assert call(node.http_port, "GET", "/v3/stats" + q).status == 401
    key = node.create_key(tenant="scoped")
    assert call(node.http_port, "POST", "/v3/stats" + q, key=key).status == 405


def _max_range() -> tuple[str, str]:
    start = dt.date(2020, 1, 1)
    return str(start), str(start + dt.timedelta(days=MAX_DAYS - 1))


def _past_max_range() -> str:
    return str(dt.date(2020, 1, 1) + dt.timedelta(days=MAX_DAYS))


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v3/stats", "start_date"),
        ("/v3/stats?start_date=", "start_date"),
        ("/v3/stats?start_date=2024-02-30", "start_date"),
        ("/v3/stats?start_date=01/02/2024", "start_date"),
        ("/v3/stats?start_date=2024-01-02&end_date=2024-13-01", "end_date"),
        ("/v3/stats?start_date=2024-01-02&end_date=2024-01-01", "end_date"),
        ("/v3/stats?start_date=2024-01-02&aggregated_by=year", "aggregated_by"),
        ("/v3/stats?start_date=2024-01-02&end_date=2024-01-03&limit=0", "limit"),
        ("/v3/stats?start_date=2024-01-02&end_date=2024-01-03&limit=x", "limit"),
        ("/v3/stats?start_date=2024-01-02&end_date=2024-01-03&offset=-1", "offset"),
        (f"/v3/stats?start_date=2020-01-01&end_date={_past_max_range()}", "end_date"),
        ("/v3/categories/stats?start_date=2024-01-02", "categories"),
        ("/v3/categories/stats?start_date=2024-01-02&categories=", "categories"),
        (f"/v3/categories/stats?start_date=2024-01-02&categories={'x' * 256}", "categories"),
        (
            "/v3/categories/stats?start_date=2024-01-02&"
            + "&".join(f"categories=c{i}" for i in range(MAX_CATEGORIES + 1)),
            "categories",
        ),
        (  # 10 categories x 500 days: more entries than one answer holds
            "/v3/categories/stats?start_date=2020-01-01&end_date=2021-05-14&"
            + "&".join(f"categories=c{i}" for i in range(MAX_CATEGORIES)),
            "aggregated_by",
        ),
        ("/v3/categories/stats/sums?end_date=2024-01-02", "start_date"),
        ("/v3/categories/stats/sums?start_date=2024-01-02&sort_by_metric=x", "sort_by_metric"),
        (
            "/v3/categories/stats/sums?start_date=2024-01-02&sort_by_direction=up",
            "sort_by_direction",
        ),
        ("/v3/categories/stats/sums?start_date=2024-01-02&limit=501", "limit"),
        ("/v3/categories/stats/sums?start_date=2024-01-02&aggregated_by=hour", "aggregated_by"),
    ],
)
def test_bad_input_is_a_400_naming_the_parameter(node: NodeProcess, path: str, field: str) -> None:
    key = node.create_key(tenant="bad")
    r = call(node.http_port, "GET", path, key=key)
    assert r.status == 400, r.body
    (err,) = r.json()["errors"]
    assert err["field"] == field and err["message"]


def test_at_the_bounds(node: NodeProcess) -> None:
    key = node.create_key(tenant="bounds")
    start, end = _max_range()
    assert len(get(node, key, f"/v3/stats?start_date={start}&end_date={end}")) == MAX_DAYS
    names = [f"c{i}" for i in range(MAX_CATEGORIES - 1)] + ["y" * 255]
    cats = "&".join(f"categories={n}" for n in names)
    last = dt.date(2020, 1, 1) + dt.timedelta(days=MAX_ENTRIES // MAX_CATEGORIES - 1)
    days = get(node, key, f"/v3/categories/stats?start_date=2020-01-01&end_date={last}&{cats}")
    assert len(days) * MAX_CATEGORIES == MAX_ENTRIES
    assert all([s["name"] for s in d["stats"]] == names for d in days)
    over = f"/v3/categories/stats?start_date=2020-01-01&end_date={last + dt.timedelta(1)}&{cats}"
    assert call(node.http_port, "GET", over, key=key).status == 400


def test_restart_with_a_lost_log_offset_counts_nothing_twice(
    mx: FakeSmtpServer, tmp_path: Any
) -> None:
    node = NodeProcess(tmp_path, fast_config(mx.port)).start()
    try:
        key = node.create_key(tenant="crash")
        send(node, key, "k1@example.com", "k2@example.com")
        before = wait_stats(node, key, lambda m: m["delivered"] >= 2)
        node.kill()
        db = sqlite3.connect(node.data_dir / "spool.db", isolation_level=None)
        try:  # the log forgets the stats consumer's progress (a crash before its commit)
            db.execute("UPDATE consumers SET offset = 0 WHERE name = 'stats'")
        finally:
            db.close()
        node.start()
        send(node, key, "k3@example.com")
        after = wait_stats(node, key, lambda m: m["delivered"] >= 3)
        assert nonzero(after) == {"processed": 3, "requests": 3, "delivered": 3}, before
    finally:
        node.stop()
