"""Connecting, with failures named for their cause and the DSN's password left out."""

from __future__ import annotations

import re
from typing import Any

import asyncpg  # type: ignore[import-untyped]

CONNECT_TIMEOUT = 10.0  # seconds for TCP + startup; a node waits this long, then says why
COMMAND_TIMEOUT = 30.0  # seconds for any one statement

# What a failed connection or query can raise: the server said no, the socket broke, or
# the connection was closed under us.
DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


class PostgresUnavailable(OSError):
    """PostgreSQL cannot be reached or refused the connection (an OSError: the CLI and
    ``postline serve`` already turn those into "cannot start: ..." and exit 1)."""


def redact(dsn: str) -> str:
    """``postgresql://user:secret@host/db`` → ``postgresql://user:***@host/db``."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)


async def connect(dsn: str) -> Any:
    try:
        return await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT, command_timeout=COMMAND_TIMEOUT)
    except DB_ERRORS as exc:
        raise PostgresUnavailable(f"cannot connect to PostgreSQL at {redact(dsn)}: {exc}") from exc


async def create_pool(dsn: str, size: int) -> Any:
    """A pool of up to ``size`` connections (one kept open); asyncpg replaces broken ones."""
    try:
        return await asyncpg.create_pool(
            dsn, min_size=1, max_size=size, timeout=CONNECT_TIMEOUT, command_timeout=COMMAND_TIMEOUT
        )
    except DB_ERRORS as exc:
        raise PostgresUnavailable(f"cannot connect to PostgreSQL at {redact(dsn)}: {exc}") from exc
