"""The vocabulary of the config tree: its error, durations with a unit, the section base.

Every section of config.py, config_sections.py and config_cluster.py derives from
:class:`Section`, so an unknown key anywhere is an error; :func:`dec_hook` lets msgspec
read a :class:`Duration` from its string form.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from msgspec import Struct


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and the key."""


class Duration(float):
    """Seconds, written in the config as a string with a unit."""

    _UNITS: ClassVar[dict[str, float]] = {
        "ms": 0.001,
        "s": 1.0,
        "m": 60.0,
        "h": 3600.0,
        "d": 86400.0,
    }
    _RE: ClassVar[re.Pattern[str]] = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")

    @classmethod
    def parse(cls, text: str) -> Duration:
        m = cls._RE.match(text)
        if not m:
            raise ValueError(
                f"invalid duration {text!r}: use a number and a unit, e.g. '500ms', '30s', '5m', "
                "'72h', '3d'"
            )
        return cls(float(m.group(1)) * cls._UNITS[m.group(2)])


def dec_hook(tp: type, value: Any) -> Any:
    if tp is Duration:
        if isinstance(value, str):
            return Duration.parse(value)
        raise ValueError(f"expected a duration string like '30s', got {value!r}")
    raise NotImplementedError(f"unsupported config type {tp}")


def duration(text: str) -> Duration:
    return Duration.parse(text)


class Section(Struct, forbid_unknown_fields=True, kw_only=True):
    pass
