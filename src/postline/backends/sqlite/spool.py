"""The embedded spool: ``<data_dir>/spool.db`` (SQLite, WAL), plus the event log and the
suppression lists that live in the same file so their writes share its transactions.

Writes (accept, lease, settle, release, expire, commit, add_suppression) go through the
group-commit writer thread (writer.py); rows are built on the caller's side with ids taken
from in-process counters (this process is the only writer), so the writer thread only runs
``executemany``. Reads run on the reader threads (reader.py). Leases are a visibility
timeout: ``due_at = now + lease_for, leased = 1``; an unsettled lease is simply due again.

Disk space: each accept is admitted against free space (space.py) so that what finishes
work in flight always has room, with a reserve file as the last resort; the owner's writer
thread gives freed pages back to the filesystem (compact.py).

A body handed as a file (``AcceptBatch.body_file``, a relayed message of up to 30 MB) is
streamed in by the writer thread inside the group's transaction (bodyfile.py); a bad file
makes that ``accept`` raise :class:`ValueError` and stores nothing of the batch. A batch
whose messages are all dropped stores no body and does not read its file.
"""

from __future__ import annotations

import functools
import itertools
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from postline.backends.sqlite import bodyfile, compact
from postline.backends.sqlite import reader as reads
from postline.backends.sqlite import schema as sql
from postline.backends.sqlite import transactions as tx
from postline.backends.sqlite.asm import SqliteAsmGroups
from postline.backends.sqlite.errors import is_full, translate
from postline.backends.sqlite.reader import Reader
from postline.backends.sqlite.space import SpaceGuard, batch_cost, free_bytes
from postline.backends.sqlite.writer import GroupCommitWriter, WriterStatistics
from postline.config import SpoolConfig
from postline.model.domain import domain_key, email_key
from postline.model.events import DROPPED, EventRecord
from postline.spool import drops
from postline.spool.drops import apply_drops
from postline.spool.interface import (
    EXPIRE_LEASE,
    AcceptBatch,
    Counts,
    Lease,
    QueueInfo,
    Settle,
    SpoolUnavailable,
    StoredMessage,
    Suppression,
    UnknownGroups,
)

Row = tuple[Any, ...]


async def open_sqlite_spool(
    data_dir: str, cfg: SpoolConfig, *, recover: bool = True
) -> SqliteSpool:
    """Open (creating if needed) ``<data_dir>/spool.db``.

    ``recover``: the node that owns the spool (it holds the data dir's lock): make every
    leased delivery due now (after a restart nothing can be in flight), keep the disk
    reserve and compact the file (space.py, compact.py). Wrong for a process only reading.
    """
    try:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpoolUnavailable(f"cannot create the data directory: {exc.strerror}") from exc
    path = str(Path(data_dir) / "spool.db")
    space = SpaceGuard(data_dir, cfg.min_free_bytes, cfg.reserve_bytes if recover else 0)
    writer = GroupCommitWriter(
        functools.partial(_connect, path),
        float(cfg.commit_window),
        keeper=compact.SpoolKeeper(path, space) if recover else None,
    )
    setup = functools.partial(_setup, fsync=cfg.fsync, owner=space if recover else None)
    max_ids = await writer.start(setup)
    reader = Reader(functools.partial(_connect, path, reader=True))
    return SqliteSpool(space, writer, reader, max_ids)


def _connect(path: str, *, reader: bool = False) -> sqlite3.Connection:
    # readers are closed by the thread that closes the spool, not the one that used them
    conn = sqlite3.connect(
        path, isolation_level=None, cached_statements=256, check_same_thread=not reader
    )
    if reader:
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA query_only=1")
    return conn


def _setup(conn: sqlite3.Connection, *, fsync: bool, owner: SpaceGuard | None) -> Row:
    sql.configure(conn, fsync=fsync)
    sql.create(conn)
    if owner is not None:
        _take_over(conn, owner)
    row: Row = conn.execute(sql.MAX_IDS).fetchone()
    return row


def _take_over(conn: sqlite3.Connection, space: SpaceGuard) -> None:
    """The owner's start: convert an old file, recover leases, set the reserve aside. A node
    restarted on a full disk uses the reserve for the recovery like for any settle."""
    space.drop_reserve_file()
    bodyfile.convert(conn, free_bytes(space.data_dir))
    compact.convert(conn, free_bytes(space.data_dir))
    try:
        conn.execute(sql.RECOVER, (time.time(),))
    except sqlite3.Error as exc:
        if not (is_full(exc) and space.release_reserve()):
            raise
        conn.execute(sql.RECOVER, (time.time(),))
    space.restore_reserve()
    space.observe(conn)


class SqliteSpool:
    """Implements :class:`~postline.spool.interface.Spool` and
    :class:`~postline.events.log.EventLog`; see :func:`open_sqlite_spool`."""

    def __init__(
        self, space: SpaceGuard, writer: GroupCommitWriter, reader: Reader, max_ids: Row
    ) -> None:
        self._space = space
        self._writer = writer
        self._reader = reader
        self._body_ids = itertools.count(max_ids[0] + 1)
        self._message_ids = itertools.count(max_ids[1] + 1)
        self._delivery_ids = itertools.count(max_ids[2] + 1)

    # -- Spool ---------------------------------------------------------------------------

    async def accept(self, batch: AcceptBatch) -> None:
        """Raises SpoolUnavailable (storage), or ValueError when ``batch.body_file`` is not
        a readable regular file of ``size`` octets (nothing of the batch is stored)."""
        cost = batch_cost(batch)
        self._space.admit(cost)  # SpoolUnavailable below min_free_bytes (space.py)
        try:
            if batch.drop_suppressed:  # checked and written in one trip (spool/drops.py)
                job = functools.partial(self._insert_checked, batch)
                refused = await self._writer.run(job, essential=False)
            else:
                refused = await self._writer.run(
                    functools.partial(tx.insert_rows, self._accept_rows(batch)), essential=False
                )
            if refused is not None:
                raise refused
        finally:
            self._space.written(cost)

    def accept_soon(self, batch: AcceptBatch, done: Callable[[BaseException | None], None]) -> None:
        """``accept`` for a caller on the event loop that answers from the writer thread:
        admission now (SpoolUnavailable raised here), then ``done(None)`` once committed or
        ``done(exception)``, called in the writer thread (smtp/supervisor.py: the relay
        worker's 250 goes out without waiting for an event loop turn)."""
        cost = batch_cost(batch)
        self._space.admit(cost)

        def finished(ok: bool, value: Any) -> None:
            self._space.written(cost)
            done(translate(value) if not ok else value)

        if batch.drop_suppressed:
            job = functools.partial(self._insert_checked, batch)
        else:
            job = functools.partial(tx.insert_rows, self._accept_rows(batch))
        try:
            self._writer.submit(job, finished, essential=False)
        except BaseException:
            self._space.written(cost)
            raise

    def _insert_checked(self, batch: AcceptBatch, conn: sqlite3.Connection) -> ValueError | None:
        """Run by the writer: drop the suppressed recipients, then insert what is left (a
        batch naming an unsubscribe group the tenant lacks is refused, nothing written)."""
        try:
            found = reads.suppressed(
                batch.tenant, drops.recipients(batch), conn, drops.groups(batch)
            )
        except UnknownGroups as exc:
            return exc
        apply_drops(batch, found)
        return tx.insert_rows(self._accept_rows(batch), conn)

    async def lease(
        self, tenant: str, domain: str, now: float, limit: int, lease_for: float
    ) -> list[Lease]:
        if limit <= 0:
            return []
        args = (domain.lower(), tenant, now, limit)
        return await self._writer.run(
            functools.partial(tx.lease, sql.SELECT_DUE, args, now + lease_for)
        )

    async def settle(self, settles: Sequence[Settle]) -> None:
        if settles:
            await self._writer.run(
                functools.partial(tx.settle, [tx.settle_item(s) for s in settles])
            )

    async def release(self, leases: Sequence[Lease], due_at: float) -> None:
        if leases:
            rows = [(due_at, lease.delivery_id) for lease in leases]
            await self._writer.run(functools.partial(tx.executemany, sql.RELEASE, rows))

    async def load(self, message_ids: Sequence[int]) -> list[StoredMessage]:
        return await self._reader.run(functools.partial(reads.load, list(message_ids)))

    async def queues(self, now: float) -> list[QueueInfo]:
        return await self._reader.run(reads.queues)

    async def next_due(self, tenant: str, domain: str) -> float | None:
        """When the queue next has work (a due or a lease's end), None when it is empty."""
        args = (domain.lower(), tenant)
        return await self._reader.run(functools.partial(reads.scalar, sql.SELECT_NEXT_DUE, args))

    async def expire(self, now: float, limit: int) -> list[Lease]:
        if limit <= 0:
            return []
        args = (now, now, limit)
        return await self._writer.run(
            functools.partial(tx.lease, sql.SELECT_EXPIRED, args, now + EXPIRE_LEASE)
        )

    async def counts(self) -> Counts:
        return await self._reader.run(reads.counts)

    async def queue_summary(self) -> tuple[int, float | None]:
        """(pending deliveries, creation time of the oldest or None): for /metrics."""
        return await self._reader.run(reads.queue_summary)

    # -- EventLog ------------------------------------------------------------------------

    async def read(self, after: int, limit: int) -> list[tuple[int, EventRecord]]:
        return await self._reader.run(functools.partial(reads.read_events, after, limit))

    async def committed(self, consumer: str) -> int:
        return await self._reader.run(functools.partial(reads.committed, consumer))

    async def commit(self, consumer: str, offset: int) -> None:
        await self._writer.run(
            functools.partial(tx.executemany, sql.COMMIT_OFFSET, [(consumer, offset)])
        )

    async def head(self) -> int:
        return await self._reader.run(reads.head)

    async def prune(self, upto: int, before: float, limit: int) -> int:
        return await self._writer.run(
            functools.partial(tx.prune_events, upto, before, limit), essential=False
        )

    # -- suppressions --------------------------------------------------------------------

    async def suppressed(
        self, tenant: str, emails: Sequence[str], groups: Sequence[int] = ()
    ) -> dict[str, str]:
        """Lower-cased email -> drop reason (e.g. "Bounced Address") of the given emails
        that are on a list that makes the accept stage drop them, or (``groups`` =
        (asm group_id, *groups_to_display)) unsubscribed from group_id. Raises
        UnknownGroups when the tenant lacks one of ``groups``."""
        wanted = sorted({email_key(e) for e in emails})
        if not wanted and not groups:
            return {}
        job = functools.partial(reads.suppressed, tenant, wanted, groups=tuple(groups))
        return await self._reader.run(job)

    @property
    def asm(self) -> SqliteAsmGroups:
        """Unsubscribe groups and their members (backends/sqlite/asm.py)."""
        return SqliteAsmGroups(self._writer, self._reader)

    async def add_suppression(
        self,
        tenant: str,
        list_name: str,
        email: str,
        *,
        reason: str = "",
        status: str = "",
        created: float | None = None,
    ) -> None:
        when = time.time() if created is None else created
        row = (tenant, email_key(email), list_name, when, reason, status)
        upsert = functools.partial(tx.executemany, sql.UPSERT_SUPPRESSION, [row])
        await self._writer.run(upsert, essential=False)

    async def record(
        self, events: Sequence[EventRecord], suppressions: Sequence[Suppression]
    ) -> None:
        """Events and suppressions about mail already settled (asynchronous bounces and
        complaints, ``postline inbound``), in one transaction."""
        rows = [sql.event_row(e) for e in events]
        sups = [
            (x.tenant, email_key(x.email), x.list_name, x.created, x.reason, x.status)
            for x in suppressions
        ]
        await self._writer.run(functools.partial(tx.record, rows, sups), essential=False)

    async def suppression_page(
        self,
        tenant: str,
        list_name: str,
        window: tuple[float, float],
        like: str,
        page: tuple[int, int],
    ) -> list[reads.SuppressionRow]:
        """For the suppressions API: see :func:`reader.suppression_page`."""
        job = functools.partial(reads.suppression_page, tenant, list_name, window, like, page)
        return await self._reader.run(job)

    async def suppression(
        self, tenant: str, list_name: str, email: str
    ) -> reads.SuppressionRow | None:
        job = functools.partial(reads.suppression, tenant, list_name, email_key(email))
        return await self._reader.run(job)

    async def remove_suppressions(
        self, tenant: str, list_name: str, emails: Sequence[str] | None
    ) -> int:
        """Take addresses (None: every one) off a tenant's list; how many were on it."""
        keys = None if emails is None else sorted({email_key(e) for e in emails})
        job = functools.partial(tx.remove_suppressions, tenant, list_name, keys)
        return await self._writer.run(job, essential=False)

    # -- lifecycle -----------------------------------------------------------------------

    def statistics(self) -> WriterStatistics:
        return self._writer.statistics()

    async def close(self) -> None:
        await self._writer.close()
        await self._reader.close()

    def problem(self) -> str | None:
        """Why the spool refuses new mail now (disk space), or None: for health checks."""
        return self._space.problem()

    def _accept_rows(self, batch: AcceptBatch) -> tx.AcceptRows:
        tenant, created, expires = batch.tenant, batch.created_at, batch.expires_at
        kept = [m for m in batch.messages if m.recipients]
        body_id = next(self._body_ids) if kept else 0
        messages: list[Row] = []
        deliveries: list[Row] = []
        delivery_ids = self._delivery_ids
        for m in kept:
            mid, rcpts, due = next(self._message_ids), m.recipients, m.due_at
            pending = len(rcpts)
            messages.append(
                (mid, body_id, tenant, m.sg_message_id, m.smtp_id, m.personalization, pending)
            )
            deliveries += [
                (next(delivery_ids), mid, tenant, r, _domain(r), due, expires, created)
                for r in rcpts
            ]
        body_file = batch.body_file if kept else None
        data = batch.body if body_file is None else body_file.size
        return tx.AcceptRows(
            (body_id, tenant, data, len(kept)) if kept else None,
            messages,
            deliveries,
            [sql.event_row(e) for e in batch.events],
            sum(1 for e in batch.events if e.event == DROPPED),
            body_file,
        )


def _domain(rcpt: str) -> str:
    return domain_key(rcpt)  # the A-label, as the engine arms the queue
