"""The exposition text parses with prometheus_client's own parser, values and labels intact."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from postline.api.prometheus import Family, render


def parse(text: bytes) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_counters_gauges_help_and_labels() -> None:
    text = render(
        [
            Family.one("accepted_requests_total", "counter", "Requests answered 202.", 12),
            Family(
                "outcomes_total",
                "counter",
                "Delivery outcomes by status.",
                (((("status", "delivered"),), 10), ((("status", "bounced"),), 2)),
            ),
            Family.one("oldest_message_age_seconds", "gauge", "Age of the oldest.", 1.5),
        ]
    )
    assert b"# TYPE postline_accepted_requests_total counter" in text
    assert b"# HELP postline_oldest_message_age_seconds Age of the oldest." in text
    parsed = parse(text)
    assert parsed["postline_accepted_requests_total"] == [({}, 12.0)]
    assert ({"status": "bounced"}, 2.0) in parsed["postline_outcomes_total"]
    assert parsed["postline_oldest_message_age_seconds"] == [({}, 1.5)]


def test_counter_without_total_is_refused() -> None:
    with pytest.raises(ValueError, match="_total"):
        render([Family.one("delivered", "counter", "x", 1)])


@given(
    value=st.text(max_size=30),
    number=st.floats(allow_nan=False) | st.integers(-(2**60), 2**60),
    help_text=st.text(max_size=30),
)
def test_any_label_value_and_number_round_trip(value: str, number: float, help_text: str) -> None:
    text = render([Family("x", "gauge", help_text, (((("k", value),), number),))])
    ((labels, got),) = parse(text)["postline_x"]
    assert labels == {"k": value}
    assert got == float(number) or (math.isinf(got) and math.isinf(number))


def test_scrape_parse_flattens_names_and_single_labels() -> None:
    from postline.testing.scrape import parse

    text = render(
        [
            Family.one("job_errors_total", "counter", "x", 3),
            Family("outcomes_total", "counter", "x", (((("status", "delivered"),), 7),)),
            Family.one("ready", "gauge", "x", 1),
        ]
    ).decode()
    assert parse(text) == {"job_errors": 3, "delivered": 7, "ready": 1}
