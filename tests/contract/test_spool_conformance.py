"""Every spool backend passes the same conformance suite (postline.spool.conformance)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from postline.backends.sqlite.spool import open_sqlite_spool
from postline.config import SpoolConfig
from postline.spool import conformance
from postline.spool.memory import MemorySpool

BACKENDS = ["memory", "sqlite"]


def factory(backend: str, tmp_path: Path) -> Callable[[], Awaitable[Any]]:
    async def memory() -> MemorySpool:
        return MemorySpool()

    async def sqlite() -> Any:
        return await open_sqlite_spool(str(tmp_path / "data"), SpoolConfig(min_free_bytes=0))

    return memory if backend == "memory" else sqlite


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("check", conformance.CHECKS, ids=conformance.name)
def test_spool(backend: str, check: Any, tmp_path: Path) -> None:
    conformance.run(factory(backend, tmp_path), check)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("check", conformance.SUPPRESSION_CHECKS, ids=conformance.name)
def test_suppressions(backend: str, check: Any, tmp_path: Path) -> None:
    conformance.run(factory(backend, tmp_path), check)
