"""A cluster node whose start times out (a NATS request during a leader election) is made
again, a few times (runtime.started); an embedded node, or any other failure, is not."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from postline import config as config_mod
from postline import runtime


class FakeNode:
    def __init__(self, failures: list[BaseException], made: list[FakeNode]) -> None:
        self.failures = failures
        made.append(self)

    async def start(self) -> None:
        if self.failures:
            raise self.failures.pop(0)


def _cfg(tmp_path: Any, clustered: bool) -> config_mod.Config:
    data: dict[str, Any] = {"data_dir": str(tmp_path)}
    if clustered:
        data["cluster"] = {"nats": ["nats://127.0.0.1:4222"], "postgres": "postgresql://x/y",
                           "replicas": 1}  # fmt: skip
    return config_mod.from_dict(data, "<test>")


def _start(
    cfg: config_mod.Config, failures: list[BaseException], made: list[FakeNode] | None = None
) -> list[FakeNode]:
    made = [] if made is None else made
    make = lambda _: FakeNode(failures, made)  # noqa: E731
    asyncio.run(runtime.started(cfg, make))  # type: ignore[arg-type]
    return made


def test_a_cluster_start_that_timed_out_is_made_again(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "START_PAUSE", 0.0)
    made = _start(_cfg(tmp_path, True), [TimeoutError("nats: timeout")] * 2)
    assert len(made) == 3  # two timed out, the third started
    made = []
    with pytest.raises(TimeoutError):  # START_TRIES timeouts: given up
        _start(_cfg(tmp_path, True), [TimeoutError()] * runtime.START_TRIES, made)
    assert len(made) == runtime.START_TRIES


def test_embedded_or_other_failures_are_not_tried_again(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "START_PAUSE", 0.0)
    made: list[FakeNode] = []
    with pytest.raises(TimeoutError):
        _start(_cfg(tmp_path, False), [TimeoutError()], made)
    with pytest.raises(OSError):  # (TimeoutError is an OSError; this one is not a timeout)
        _start(_cfg(tmp_path, True), [OSError("port taken")], made)
    assert len(made) == 2  # one start each
