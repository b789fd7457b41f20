"""SQLite errors at the storage boundary: which of them mean the spool is unavailable.

One job: :func:`translate` turns a storage error (disk full, read-only, I/O error, cannot
open, locked, corrupt; an :class:`OSError`) into :class:`SpoolUnavailable`, its reason
named for the cause and the original as ``__cause__``, so the doors answer 503/452; any
other error (a bug, a bad value) stays itself. The reason comes from SQLite's primary
result code, or from the message text of an ``OperationalError`` that carries none.
:func:`is_full` tells SQLITE_FULL apart (the writer splits such a batch by kind, writer.py)
and :func:`rollback` ends a transaction that failed, whatever state SQLite left it in.
Used by the writer thread (writer.py), the readers (reader.py) and bodyfile.py.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from postline.spool.interface import SpoolUnavailable

DISK_FULL = "disk full"

_UNAVAILABLE = {
    sqlite3.SQLITE_FULL: DISK_FULL,
    sqlite3.SQLITE_READONLY: "storage is read-only",
    sqlite3.SQLITE_IOERR: "disk I/O error",
    sqlite3.SQLITE_CANTOPEN: "cannot open the spool files",
    sqlite3.SQLITE_BUSY: "spool is locked by another process",
    sqlite3.SQLITE_LOCKED: "spool is locked",
    sqlite3.SQLITE_PROTOCOL: "spool lock protocol error",
    sqlite3.SQLITE_CORRUPT: "spool database is corrupt",
    sqlite3.SQLITE_NOTADB: "spool.db is not a database",
}


_TEXT_REASONS = [
    ("full", DISK_FULL),
    ("readonly", "storage is read-only"),
    ("I/O", "disk I/O error"),
    ("locked", "spool is locked"),
]


def translate(exc: BaseException) -> BaseException:
    """Storage errors become SpoolUnavailable (the doors answer 503/452); others stay."""
    if isinstance(exc, SpoolUnavailable):
        return exc
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        reason = _UNAVAILABLE.get(code & 0xFF) if isinstance(code, int) else None
        if reason is None and isinstance(exc, sqlite3.OperationalError):
            reason = _reason_from_text(str(exc))
    elif isinstance(exc, OSError):
        reason = f"storage error: {exc.strerror or exc}"
    else:
        reason = None
    if reason is None:
        return exc
    unavailable = SpoolUnavailable(reason)
    unavailable.__cause__ = exc
    return unavailable


def _reason_from_text(text: str) -> str | None:
    for needle, reason in _TEXT_REASONS:
        if needle in text:
            return reason
    return None


def is_full(result: list[Any] | BaseException) -> bool:
    if isinstance(result, list):
        return False
    translated = translate(result)
    return isinstance(translated, SpoolUnavailable) and translated.reason == DISK_FULL


def rollback(conn: sqlite3.Connection) -> None:
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass  # after an I/O error SQLite may have rolled back already
