"""Connecting, with failures named for their cause and the DSN's password left out."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]

log = logging.getLogger("postline.postgres")
T = TypeVar("T")

CONNECT_TIMEOUT = 10.0  # seconds for TCP + startup; a node waits this long, then says why
COMMAND_TIMEOUT = 30.0  # seconds for any one statement
# Seconds for one migration statement, or for waiting on the migration lock while another
# node migrates: a node starting during a long migration waits for it rather than failing.
MIGRATE_TIMEOUT = 600.0

# What a failed connection or query can raise: the server said no, the socket broke, or
# the connection was closed under us.
DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # seen when a query races the server closing the connection
)
# The connection broke (server restarted, backend terminated, socket reset), not the
# statement: worth one more try on a fresh connection.
CONNECTION_LOST: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin / crash shutdown
)


class PostgresUnavailable(OSError):
    """PostgreSQL cannot be reached or refused the connection (an OSError: the CLI and
    ``postline serve`` already turn those into "cannot start: ..." and exit 1)."""


def redact(dsn: str) -> str:
    """``postgresql://user:secret@host/db`` → ``postgresql://user:***@host/db``."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)


async def connect(dsn: str, command_timeout: float = COMMAND_TIMEOUT) -> Any:
    try:
        return await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT, command_timeout=command_timeout)
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


async def with_retry(pool: Any, op: Callable[[Any], Awaitable[T]]) -> T:
    """``op(connection)``, again on a fresh connection if the first one was found broken
    (after a PostgreSQL restart or failover every pooled connection is; the pool
    replaces a connection that raised)."""
    try:
        async with pool.acquire() as conn:
            return await op(conn)
    except CONNECTION_LOST as exc:
        log.info("PostgreSQL connection lost (%s); retrying once", exc)
    async with pool.acquire() as conn:
        return await op(conn)
