"""Publishing with acknowledgements: pipelined, bounded, retried with the same message id.

``put_all`` sends every message with ``publish_async`` (nats-py bounds the number in flight
with ``publish_async_max_pending``) and returns once every PubAck is back: the stream
stored each message with its replicas (an R3 PubAck comes after the quorum wrote it). A
PubAck that does not come within ``timeout`` is retried with the same ``Nats-Msg-Id``, so a
message stored twice is a duplicate the server drops (``duplicate_window``).

nats-py 2.16 never resolves a ``publish_async`` future when the server answers with an
error (``APIError.from_error`` raises inside its reply handler), so an error looks like a
timeout here. Conditional writes (``Nats-Expected-Last-Subject-Sequence``) therefore go
through ``cas``, a request/reply ``js.publish`` that does report the error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from nats.errors import NoRespondersError
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, NoStreamResponseError

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

    async def cas(self, out: Out, last_seq: int) -> int:
        """Write ``out`` only if its subject's last sequence is ``last_seq``."""
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
                    raise Conflict(out.subject) from exc
                raise SpoolUnavailable(f"JetStream refused {out.subject}: {exc}") from exc
            return int(ack.seq)
        raise SpoolUnavailable(f"JetStream did not acknowledge {out.subject}", retry_after=5)
