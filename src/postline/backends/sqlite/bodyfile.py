"""A body handed as a file, streamed into ``bodies.data`` by the writer thread.

One job: copy ``AcceptBatch.body_file`` (a relayed message of up to 30 MB) into the spool
inside the group's transaction without holding it in memory. The body row is inserted as
``zeroblob(size)`` and filled through ``blobopen`` in chunks of at most 1 MiB read into one
buffer, so the copy costs about 1 MiB of memory whatever the size (schema.py says why
``data`` is the last column; :func:`convert` gives an older file that layout). A file that
is missing, unreadable, not a regular file or not ``size`` octets makes that ``accept``
raise :class:`ValueError` (its OSError as the cause) and stores nothing of the batch: the
file is checked before anything is written, and a file that changes during the copy is
rolled back to a savepoint, so the other batches of the group commit as usual.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from io import FileIO
from typing import Any

from postline.backends.sqlite import schema as sql
from postline.backends.sqlite.errors import rollback
from postline.spool.interface import BodyFile

COPY_CHUNK = 1 << 20  # octets of a body file read and written at a time
REORDER_MAX_BYTES = 128 * 1024 * 1024  # bodies of an older file rebuilt at start (schema.py)

log = logging.getLogger("postline.spool")


def insert(
    body: tuple[Any, ...], body_file: BodyFile, conn: sqlite3.Connection
) -> ValueError | None:
    """The body row ``(id, tenant, size, refs)`` with its data copied from ``body_file``;
    a bad file is returned, not raised, with nothing written, so the rest of the group
    commits."""
    try:
        f = open(body_file.path, "rb", buffering=0)  # noqa: SIM115 (a with block below)
    except OSError as exc:
        return _bad_file(body_file, exc.strerror or str(exc), exc)
    with f:
        problem = _check_file(f, body_file)
        if problem is not None:
            return problem
        conn.execute("SAVEPOINT body_file")
        try:
            conn.execute(sql.INSERT_BODY_SIZED, body)
            with conn.blobopen("bodies", "data", body[0]) as blob:
                _copy(f, blob, body_file)
        except ValueError as exc:  # only _copy raises it: the file changed under us
            conn.execute("ROLLBACK TO body_file")
            conn.execute("RELEASE body_file")
            return exc
        conn.execute("RELEASE body_file")
    return None


def _check_file(f: FileIO, body_file: BodyFile) -> ValueError | None:
    try:
        st = os.fstat(f.fileno())
    except OSError as exc:
        return _bad_file(body_file, exc.strerror or str(exc), exc)
    if not stat.S_ISREG(st.st_mode):
        return _bad_file(body_file, "not a regular file")
    if st.st_size != body_file.size:
        return _bad_file(body_file, f"{st.st_size} octets, not {body_file.size}")
    return None


def _copy(f: FileIO, blob: sqlite3.Blob, body_file: BodyFile) -> None:
    """``body_file.size`` octets from ``f`` into ``blob``, at most COPY_CHUNK at a time
    through one buffer; ValueError if the file cannot be read, ends early or goes on."""
    size = body_file.size
    view = memoryview(bytearray(max(1, min(size, COPY_CHUNK))))
    done = 0
    while done < size:
        n = _read_into(f, view[: size - done], body_file)
        if not n:
            raise _bad_file(body_file, f"ended after {done} octets, not {size}")
        blob.write(view[:n])
        done += n
    if _read_into(f, view[:1], body_file):
        raise _bad_file(body_file, f"longer than {size} octets")


def _read_into(f: FileIO, view: memoryview, body_file: BodyFile) -> int:
    try:
        return f.readinto(view) or 0
    except OSError as exc:
        raise _bad_file(body_file, exc.strerror or str(exc), exc) from exc


def _bad_file(body_file: BodyFile, why: str, cause: OSError | None = None) -> ValueError:
    error = ValueError(f"body file {body_file.path}: {why}")
    error.__cause__ = cause
    return error


def convert(conn: sqlite3.Connection, free: int) -> None:
    """An older file gets ``data`` last (schema.py) while its bodies are small and the disk
    has room for two more copies (the new table and the WAL); else it keeps working, and a
    body file shared by several messages costs a buffer of its size while it is inserted."""
    if sql.data_is_last(conn):
        return
    size = sql.body_bytes(conn)
    if size > REORDER_MAX_BYTES or 3 * size > free:
        log.warning(
            "spool.db stores bodies in an older layout: a streamed body is zeroed in memory"
            f" once; the file is converted at a start when its bodies hold under"
            f" {REORDER_MAX_BYTES >> 20} MB",
            extra={"body_bytes": size},
        )
        return
    try:
        sql.reorder_bodies(conn)
    except sqlite3.Error:
        rollback(conn)
        raise
    log.info("spool.db bodies rebuilt with data last", extra={"body_bytes": size})
