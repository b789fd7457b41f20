"""Publishing with acknowledgements: pipelined, bounded, retried with the same message id.

``put_all`` sends every message with ``publish_async`` (nats-py bounds the number in flight
with ``publish_async_max_pending``) and returns once every PubAck is back: the stream
stored each message with its replicas (an R3 PubAck comes after the quorum wrote it). A
PubAck that does not come within ``timeout`` is retried with the same ``Nats-Msg-Id``, so a
message stored twice is a duplicate the server drops (``duplicate_window``).

nats-py 2.16 never resolves a ``publish_async`` future when the server answers with an
error (``APIError.from_error`` raises inside its reply handler), so an error looks like a
timeout here. Conditional writes (``Nats-Expected-Last-Subject-Sequence``) therefore go
through ``cas`` (one, a request/reply ``js.publish`` that does report the error) or
``cas_all`` (many, pipelined like ``put_all`` over a reply inbox of this publisher's own,
whose handler reads the error: a request and a ``wait_for`` per write cost a cluster node
about a tenth of its event loop, py-spy under bench.cluster).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError

from postline.spool.interface import SpoolUnavailable

WRONG_LAST_SEQUENCE = 10071
# No answer or no responders (a stream electing a leader after a server died, measured
# 5-8 s on 2.9.10): retried with a growing pause until ``give_up_after``
RETRYABLE = (TimeoutError, NoStreamResponseError, NoRespondersError)


@dataclass(slots=True, frozen=True)
class Out:
    subject: str
    payload: bytes
    msg_id: str
    headers: tuple[tuple[str, str], ...] = ()


class Conflict(Exception):
    """A conditional write found another last sequence on its subject."""


class Publisher:
    def __init__(
        self, js: JetStreamContext, timeout: float = 5.0, give_up_after: float = 30.0
    ) -> None:
        self.js = js
        self.timeout = timeout
        self.give_up_after = give_up_after
        self._replies: _Replies | None = None  # cas_all's reply inbox, made at first use
        self._replies_made = asyncio.Lock()  # by one caller, however many come at once

    def _attempts(self) -> Iterator[int]:
        deadline = time.monotonic() + self.give_up_after
        attempt = 0
        while attempt == 0 or time.monotonic() < deadline:
            yield attempt
            attempt += 1

    async def _pause(self, attempt: int) -> None:
        await asyncio.sleep(min(0.05 * 2**attempt, 1.0))

    async def put(self, out: Out) -> int:
        """Publish one message until its PubAck; return its stream sequence."""
        return (await self.put_all([out]))[0]

    async def put_all(self, outs: Sequence[Out]) -> list[int]:
        """Publish every message, pipelined, until each has its PubAck; their sequences.

        One ``asyncio.wait`` for the batch's acks, not a task and a ``wait_for`` per message:
        py-spy of a cluster node under ``bench.cluster`` found ~14% of its event loop in the
        tasks and timeouts of that (``asyncio.gather`` of ``put``, each with ``wait_for``)
        and in nats-py's ``wait_for`` around its semaphore, which ``wait_stall=None`` skips
        (Python 3.11's ``wait_for`` awaits directly without a timeout). The semaphore still
        bounds the messages in flight; a slot comes back when an ack arrives or when this
        cancels a future that timed out."""
        if not outs:
            return []
        seqs = [0] * len(outs)
        todo = list(range(len(outs)))
        for attempt in self._attempts():
            futures: dict[asyncio.Future[Any], int] = {}
            for i in todo:
                out = outs[i]
                headers = {"Nats-Msg-Id": out.msg_id, **dict(out.headers)}
                fut = await self.js.publish_async(
                    out.subject, out.payload, headers=headers, wait_stall=None
                )
                futures[fut] = i
            done, late = await asyncio.wait(futures, timeout=self.timeout)
            for fut in late:
                fut.cancel()  # gives its slot back; published again with the same id
            todo = [futures[f] for f in late]
            for fut in done:
                if fut.cancelled():  # by nats-py, its connection closing: publish again
                    todo.append(futures[fut])
                    continue
                exc = fut.exception()
                if exc is None:
                    seqs[futures[fut]] = int(fut.result().seq)
                elif isinstance(exc, RETRYABLE):
                    todo.append(futures[fut])
                else:
                    raise exc
            if not todo:
                return seqs
            await self._pause(attempt)
        raise SpoolUnavailable(
            f"JetStream did not acknowledge {outs[todo[0]].subject}", retry_after=5
        )

    async def cas_all(self, stream: str, writes: Sequence[tuple[Out, int]]) -> list[int | Conflict]:
        """Conditional writes ``(out, the subject's last sequence)`` into ``stream``,
        pipelined: for each the new stream sequence, or a :class:`Conflict` when its subject
        had moved on. Retried with the same ids as ``put_all`` is; any other refusal raises
        SpoolUnavailable. A Conflict is checked (``_ours``) before it is reported."""
        if not writes:
            return []
        results = await self._cas_all(writes)
        conflicts = [i for i, r in enumerate(results) if isinstance(r, Conflict)]
        found = await asyncio.gather(*(self._ours(stream, writes[i][0]) for i in conflicts))
        for i, seq in zip(conflicts, found, strict=True):
            if seq is not None:
                results[i] = seq
        return results

    async def _ours(self, stream: str, out: Out) -> int | None:
        """The sequence of ``out`` if its subject's last message is ``out`` itself: an
        earlier try of this write stored it and its PubAck was lost (a timeout, a server
        that died before answering). On a clustered (R3) stream nats-server 2.9.10 refuses
        such a retry as "wrong last sequence" (10071) rather than acknowledging it as a
        duplicate of its ``Nats-Msg-Id`` as an R1 stream does; read as a Conflict, the
        lease the write took went unused until it expired. None: a real conflict."""
        try:
            last = await self.js.get_last_msg(stream, out.subject)
        except (NotFoundError, *RETRYABLE):
            return None  # gone, or no answer now: a Conflict, as before (a delay at worst)
        if (last.headers or {}).get("Nats-Msg-Id") == out.msg_id:
            return int(last.seq or 0)
        return None

    async def _cas_all(self, writes: Sequence[tuple[Out, int]]) -> list[int | Conflict]:
        replies = await self._reply_inbox()
        results: list[int | Conflict] = [0] * len(writes)
        todo = list(range(len(writes)))
        for attempt in self._attempts():
            futures: dict[asyncio.Future[int], int] = {}
            try:
                for i in todo:
                    out, last_seq = writes[i]
                    headers = {
                        "Nats-Msg-Id": out.msg_id,
                        "Nats-Expected-Last-Subject-Sequence": str(last_seq),
                        **dict(out.headers),
                    }
                    fut, reply = replies.expect(out.subject)
                    futures[fut] = i
                    await replies.nc.publish(out.subject, out.payload, reply=reply, headers=headers)
            except BaseException:  # the connection closed, or the caller cancelled
                for fut in futures:
                    fut.cancel()  # nothing left waiting in the inbox
                raise
            done, late = await asyncio.wait(futures, timeout=self.timeout)
            for fut in late:
                fut.cancel()  # its reply, should it come, finds no future
            todo = [futures[f] for f in late]
            fatal: BaseException | None = None
            for fut in done:  # every outcome read, so none is left unretrieved
                exc = fut.exception()
                if exc is None:
                    results[futures[fut]] = fut.result()
                elif isinstance(exc, Conflict):
                    results[futures[fut]] = exc
                elif isinstance(exc, RETRYABLE):
                    todo.append(futures[fut])
                else:
                    fatal = fatal or exc
            if fatal is not None:
                raise fatal
            if not todo:
                return results
            await self._pause(attempt)
        subject = writes[todo[0]][0].subject
        raise SpoolUnavailable(f"JetStream did not acknowledge {subject}", retry_after=5)

    async def prepare(self) -> None:
        """Subscribe ``cas_all``'s reply inbox now, well before the first write. On an R3
        stream the PubAck comes from the stream's leader, often another server, and a
        new subscription's interest reaches the other servers of the cluster a moment
        later: a write made right after subscribing could lose its reply, wait out the
        timeout and be retried; the retry, refused because the first try had already
        moved its subject on, read as a Conflict, and the lease it had taken went
        unused until it expired (a cluster delivery test lost a deferral for more than
        15 s in 3 of ~22 runs; 0 of 22 with the inbox made earlier)."""
        await self._reply_inbox()

    async def _reply_inbox(self) -> _Replies:
        async with self._replies_made:
            if self._replies is None:
                nc = self.js._nc  # nats-py keeps the client private; no public accessor
                replies = _Replies(nc, nc.new_inbox())
                await nc.subscribe(f"{replies.inbox}.*", cb=replies.on_reply)
                await nc.flush()
                self._replies = replies
            return self._replies

    async def cas(self, stream: str, out: Out, last_seq: int) -> int:
        """Write ``out`` into ``stream`` only if its subject's last sequence is ``last_seq``
        (a Conflict is checked as ``cas_all``'s are)."""
        headers = {
            "Nats-Msg-Id": out.msg_id,
            "Nats-Expected-Last-Subject-Sequence": str(last_seq),
            **dict(out.headers),
        }
        for attempt in self._attempts():
            try:
                ack = await self.js.publish(
                    out.subject, out.payload, timeout=self.timeout, headers=dict(headers)
                )
            except RETRYABLE:
                await self._pause(attempt)
                continue
            except APIError as exc:
                if exc.err_code == WRONG_LAST_SEQUENCE:
                    seq = await self._ours(stream, out)
                    if seq is not None:
                        return seq
                    raise Conflict(out.subject) from exc
                raise SpoolUnavailable(f"JetStream refused {out.subject}: {exc}") from exc
            return int(ack.seq)
        raise SpoolUnavailable(f"JetStream did not acknowledge {out.subject}", retry_after=5)


class _Replies:
    """The PubAcks of ``cas_all``: one subscription on ``<inbox>.*``, a future per write
    by its token. A reply is a PubAck (the new sequence), an error (10071: the subject's
    last sequence moved on, a :class:`Conflict`; anything else, SpoolUnavailable) or
    "no responders" (no stream leader now: retried)."""

    def __init__(self, nc: Any, inbox: str) -> None:
        self.nc = nc
        self.inbox = inbox
        self._tokens = itertools.count()
        self._waiting: dict[str, tuple[asyncio.Future[int], str]] = {}

    def expect(self, subject: str) -> tuple[asyncio.Future[int], str]:
        token = str(next(self._tokens))
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting[token] = (fut, subject)
        fut.add_done_callback(lambda _: self._waiting.pop(token, None))
        return fut, f"{self.inbox}.{token}"

    async def on_reply(self, msg: Msg) -> None:
        found = self._waiting.get(msg.subject.rpartition(".")[2])
        if found is None or found[0].done():
            return  # answered after its write timed out: it is published again anyway
        fut, subject = found
        if msg.headers and msg.headers.get("Status") == "503":
            fut.set_exception(NoRespondersError())
            return
        try:
            resp = json.loads(msg.data)
            error = resp.get("error")
            if error is None:
                fut.set_result(int(resp["seq"]))
            elif error.get("err_code") == WRONG_LAST_SEQUENCE:
                fut.set_exception(Conflict(subject))
            else:
                fut.set_exception(SpoolUnavailable(f"JetStream refused {subject}: {error}"))
        except (ValueError, TypeError, KeyError, AttributeError):  # not a PubAck's shape
            fut.set_exception(SpoolUnavailable(f"JetStream answered {subject} with {msg.data!r}"))
