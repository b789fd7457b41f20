"""Events → SendGrid's statistics metrics (stats/metrics.py) and the UTC days and periods
of the API (stats/dates.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postline.model.events import EventRecord, make_event
from postline.stats import dates
from postline.stats.metrics import METRICS, categories_of, first_key, fold, metrics_of

DAY0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
D0 = int(DAY0 // 86400)


def event(kind: str, ts: float = DAY0, tenant: str = "t", **extra: Any) -> EventRecord:
    cats = extra.pop("categories", None)
    email = extra.pop("email", "bob@x.example")
    msg = extra.pop("msg", "m1")
    return make_event(
        kind, tenant=tenant, email=email, ts=ts, sg_message_id=msg, smtp_id="<s>",
        categories=cats, extra=extra,
    )  # fmt: skip


def test_metric_names_are_sendgrids_sixteen_in_order() -> None:
    assert len(METRICS) == 16 and list(METRICS) == sorted(METRICS)


@pytest.mark.parametrize(
    ("kind", "reason", "btype", "want"),
    [
        ("processed", "", "", ("processed", "requests")),
        ("delivered", "", "", ("delivered",)),
        ("deferred", "", "", ("deferred",)),
        ("bounce", "550 gone", "bounce", ("bounces",)),
        ("bounce", "554 policy", "blocked", ("blocks",)),
        ("bounce", "expired", "", ("bounces",)),
        ("dropped", "Bounced Address", "", ("requests", "bounce_drops")),
        ("dropped", "Unsubscribed Address", "", ("requests", "unsubscribe_drops")),
        ("dropped", "Spam Reporting Address", "", ("requests", "spam_report_drops")),
        ("dropped", "Invalid", "", ("requests", "invalid_emails")),
        ("dropped", "Spam Content", "", ("requests",)),
        ("open", "", "", ("opens",)),
        ("click", "", "", ("clicks",)),
        ("spamreport", "", "", ("spam_reports",)),
        ("unsubscribe", "", "", ("unsubscribes",)),
        ("group_unsubscribe", "", "", ("unsubscribes",)),
        ("group_resubscribe", "", "", ()),
        ("something_new", "", "", ()),
    ],
)
def test_event_to_metrics(kind: str, reason: str, btype: str, want: tuple[str, ...]) -> None:
    assert metrics_of(kind, reason, btype) == want
    assert set(want) <= set(METRICS)


def test_categories_list_string_duplicates_and_junk() -> None:
    assert categories_of(["a", "b", "a", "", 3]) == ["a", "b"]
    assert categories_of("solo") == ["solo"]
    assert categories_of(None) == [] and categories_of({"x": 1}) == []


def test_fold_counts_global_and_per_category_on_the_utc_day() -> None:
    r = fold([
        event("processed", categories=["a", "b"]),
        event("processed", ts=DAY0 + 86400),  # the next UTC day
        event("dropped", reason="Bounced Address", categories=["a"]),
        event("bounce", type="blocked", tenant="u"),
        event("group_resubscribe"),
    ])  # fmt: skip
    assert r.events == 5 and r.counted == 4
    assert r.counts() == {
        ("t", "", D0, "processed"): 1,
        ("t", "", D0, "requests"): 2,
        ("t", "a", D0, "processed"): 1,
        ("t", "a", D0, "requests"): 2,
        ("t", "b", D0, "processed"): 1,
        ("t", "b", D0, "requests"): 1,
        ("t", "", D0 + 1, "processed"): 1,
        ("t", "", D0 + 1, "requests"): 1,
        ("t", "", D0, "bounce_drops"): 1,
        ("t", "a", D0, "bounce_drops"): 1,
        ("u", "", D0, "blocks"): 1,
    }


def test_opens_and_clicks_become_first_candidates_per_recipient() -> None:
    r = fold([event("open", email="Bob@X.example", categories=["a"]), event("click")])
    assert [(f.metric, f.key, f.categories) for f in r.firsts] == [
        ("unique_opens", first_key("t", "unique_opens", "m1", "bob@x.example"), ("a",)),
        ("unique_clicks", first_key("t", "unique_clicks", "m1", "BOB@x.example"), ()),
    ]
    assert len({f.key for f in r.firsts}) == 2
    r.add_first(r.firsts[0])
    assert r.counts()[("t", "a", D0, "unique_opens")] == 1


def test_duplicate_and_junk_categories_count_once() -> None:
    r = fold([event("delivered", categories=["a", "a", ""]), event("delivered", category=[{}])])
    assert r.counts() == {("t", "", D0, "delivered"): 2, ("t", "a", D0, "delivered"): 1}


def test_a_corrupt_event_still_counts_by_type() -> None:
    rec = EventRecord(DAY0, "t", "delivered", "b@x", "m", b"{not json")
    assert fold([rec]).counts() == {("t", "", D0, "delivered"): 1}


# -- dates ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["2024-02-30", "2024-1-01", "20240101", "", "2024-01-01x", "x"])
def test_bad_dates(text: str) -> None:
    assert dates.parse_date(text) is None


def test_periods_week_and_month_labels() -> None:
    start, end = dates.parse_date("2024-01-03"), dates.parse_date("2024-03-05")
    assert start is not None and end is not None
    months = [dates.label(d) for d in dates.periods(start, end, "month")]
    assert months == ["2024-01-03", "2024-02-01", "2024-03-01"]
    weeks = [dates.label(d) for d in dates.periods(start, start + 13, "week")]
    assert weeks == ["2024-01-03", "2024-01-08", "2024-01-15"]  # Mondays after the start
    dec = dates.parse_date("2023-12-20")
    assert dec is not None
    assert [dates.label(d) for d in dates.periods(dec, dec + 20, "month")] == [
        "2023-12-20", "2024-01-01",
    ]  # fmt: skip


@given(
    st.dates(dt.date(1990, 1, 1), dt.date(2100, 1, 1)),
    st.integers(0, 400),
    st.sampled_from(dates.AGGREGATIONS),
)
def test_every_day_falls_in_exactly_its_period(start: dt.date, span: int, agg: str) -> None:
    s = (start - dates.EPOCH).days
    labels = dates.periods(s, s + span, agg)
    assert labels[0] == s and labels == sorted(set(labels))
    for day in range(s, s + span + 1):
        b = dates.bucket(day, s, agg)
        assert b in labels
        assert max(x for x in labels if x <= day) == b
