"""Pieces of the operator's commands: durations, tables, rates, ids that begin with '-'."""

from __future__ import annotations

import pytest

from postline.control import Rates
from postline.ops import normalize_argv
from postline.ops.render import duration, relative, table


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.9, "59s"), (61, "1m01s"), (600, "10m"), (3900, "1h05m"), (90000, "1d01h")],
)
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_relative() -> None:
    assert relative(100.0, 40.0) == "in 1m00s"
    assert relative(40.0, 100.0) == "1m00s ago"
    assert relative(100.2, 100.0) == "now"
    assert relative(None, 1.0) == "-"


def test_table_aligns_numbers_right_and_text_left() -> None:
    out = table(["DOMAIN", "N"], [["a.test", 5], ["bbbbbb.test", 120]])
    assert out.splitlines() == ["DOMAIN         N", "a.test         5", "bbbbbb.test  120"]


def test_rates_per_minute_over_the_windows() -> None:
    now = [0.0]
    rates = Rates(lambda: now[0])
    for t in range(0, 901, 10):
        now[0] = float(t)
        rates.sample({"delivered": t * 2.0})  # 120 a minute
    got = rates.per_minute({"delivered": 1800.0})
    assert got["1m"]["delivered"] == 120 and got["15m"]["delivered"] == 120
    young = Rates(lambda: now[0])
    now[0] = 0.0
    young.sample({"delivered": 0.0})
    now[0] = 20.0
    assert young.per_minute({"delivered": 10.0}) == {
        "1m": {"delivered": 30.0, "deferred": 0.0, "bounced": 0.0, "expired": 0.0, "seconds": 20}
    }  # over the 20 s the node has lived; the longer windows are left out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["messages", "show", "-abc"], ["messages", "show", "--id=-abc"]),
        (["messages", "show", "--json", "-abc"], ["messages", "show", "--json", "--id=-abc"]),
        (
            ["messages", "show", "--config", "x.toml", "-abc"],
            ["messages", "show", "--config", "x.toml", "--id=-abc"],
        ),
        (["messages", "show", "abc", "--json"], ["messages", "show", "abc", "--json"]),
        (["queue", "purge", "--message", "-x.pl1.0"], ["queue", "purge", "--message=-x.pl1.0"]),
        (["status", "--json"], ["status", "--json"]),
    ],
)
def test_ids_that_begin_with_a_dash(argv: list[str], expected: list[str]) -> None:
    assert normalize_argv(argv) == expected
