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
from collections.abc import Sequence
from dataclasses import dataclass

from nats.js.client import JetStreamContext
from nats.js.errors import APIError

from postline.spool.interface import SpoolUnavailable

WRONG_LAST_SEQUENCE = 10071


@dataclass(slots=True, frozen=True)
class Out:
    subject: str
    payload: bytes
    msg_id: str
    headers: tuple[tuple[str, str], ...] = ()


class Conflict(Exception):
    """A conditional write found another last sequence on its subject."""


class Publisher:
    def __init__(self, js: JetStreamContext, timeout: float = 5.0, attempts: int = 4) -> None:
        self.js = js
        self.timeout = timeout
        self.attempts = attempts

    async def put(self, out: Out) -> int:
        """Publish one message until its PubAck; return its stream sequence."""
        headers = {"Nats-Msg-Id": out.msg_id, **dict(out.headers)}
        for _ in range(self.attempts):
            fut = await self.js.publish_async(
                out.subject, out.payload, headers=dict(headers), wait_stall=self.timeout
            )
            try:
                ack = await asyncio.wait_for(fut, self.timeout)
            except TimeoutError:
                continue
            return int(ack.seq)
        raise SpoolUnavailable(f"JetStream did not acknowledge {out.subject}", retry_after=5)

    async def put_all(self, outs: Sequence[Out]) -> list[int]:
        return list(await asyncio.gather(*(self.put(o) for o in outs)))

    async def cas(self, out: Out, last_seq: int) -> int:
        """Write ``out`` only if its subject's last sequence is ``last_seq``."""
        headers = {
            "Nats-Msg-Id": out.msg_id,
            "Nats-Expected-Last-Subject-Sequence": str(last_seq),
            **dict(out.headers),
        }
        for _ in range(self.attempts):
            try:
                ack = await self.js.publish(
                    out.subject, out.payload, timeout=self.timeout, headers=dict(headers)
                )
            except TimeoutError:
                continue
            except APIError as exc:
                if exc.err_code == WRONG_LAST_SEQUENCE:
                    raise Conflict(out.subject) from exc
                raise SpoolUnavailable(f"JetStream refused {out.subject}: {exc}") from exc
            return int(ack.seq)
        raise SpoolUnavailable(f"JetStream did not acknowledge {out.subject}", retry_after=5)
