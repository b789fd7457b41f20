"""The Prometheus text exposition format (version 0.0.4), written out by hand.

Each family has ``# HELP`` and ``# TYPE`` lines; counters end in ``_total``; label values
are escaped as the format asks (backslash, double quote, newline). Pure: the node gathers
the numbers, this turns them into text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Family:
    name: str  # without the prefix; counters end in _total
    kind: str  # "counter" or "gauge"
    help: str
    samples: Sequence[tuple[Labels, float]] = field(default_factory=tuple)

    @staticmethod
    def one(name: str, kind: str, help: str, value: float) -> Family:
        return Family(name, kind, help, (((), value),))


def render(families: Iterable[Family], prefix: str = "postline_") -> bytes:
    lines: list[str] = []
    for fam in families:
        name = prefix + fam.name
        if not _NAME.fullmatch(name) or fam.kind not in ("counter", "gauge"):
            raise ValueError(f"bad metric family {name!r} ({fam.kind})")
        if fam.kind == "counter" and not name.endswith("_total"):
            raise ValueError(f"counter {name!r} must end in _total")
        lines.append(f"# HELP {name} {_escape_help(fam.help)}")
        lines.append(f"# TYPE {name} {fam.kind}")
        lines.extend(f"{name}{_labels(labels)} {_number(v)}" for labels, v in fam.samples)
    return ("\n".join(lines) + "\n").encode()


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape_value(v)}"' for k, v in labels)
    return "{" + inner + "}"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))
