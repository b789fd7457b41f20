"""A lean HTTP/1.1 load generator: keep-alive connections replaying pre-encoded requests.

Kept minimal on purpose: on a 2-core machine the client shares the CPU with the node, so
every microsecond it spends is one the node does not get. Each connection sends one
request, reads the status line and ``Content-Length`` body, and repeats.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    requests: int = 0
    seconds: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def build_request(host: str, path: str, body: bytes, key: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _one_connection(
    port: int,
    make: Callable[[], bytes],
    deadline: float,
    result: LoadResult,
    limit: list[int],
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < deadline and limit[0] > 0:
            limit[0] -= 1
            start = time.perf_counter()
            writer.write(make())
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            result.latencies.append(time.perf_counter() - start)
            result.statuses[int(status_line[9:12])] += 1
            result.requests += 1
    finally:
        writer.close()


async def run_load(
    port: int,
    make: Callable[[], bytes],
    *,
    seconds: float,
    connections: int,
    max_requests: int = 10**12,
) -> LoadResult:
    result = LoadResult()
    limit = [max_requests]
    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(
        *(_one_connection(port, make, deadline, result, limit) for _ in range(connections))
    )
    result.seconds = time.perf_counter() - start
    return result
