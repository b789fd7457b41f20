"""Read a node's ``GET /metrics`` as a flat dict, for tests and benchmarks.

Names lose the ``postline_`` prefix and the ``_total`` suffix; a sample with one label is
keyed by the label's value (``postline_outcomes_total{status="delivered"}`` is
``delivered``), so a reader asks for what it counts, not how it is exposed.
"""

from __future__ import annotations

import re
import urllib.request

_SAMPLE = re.compile(r'^postline_(\w+?)(?:_total)?(?:\{\w+="([^"]*)"\})? (\S+)$')


def parse(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            out[m.group(2) or m.group(1)] = float(m.group(3))
    return out


def scrape(port: int, host: str = "127.0.0.1", key: str = "") -> dict[str, float]:
    req = urllib.request.Request(f"http://{host}:{port}/metrics")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return parse(resp.read().decode())
