"""The relay refuses a line over 998 octets however the data is cut into chunks."""

from __future__ import annotations

import asyncio
import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st

from postline.accept.relay import S554_LINE_TOO_LONG, Refused, RelayIntake
from postline.smtp.events import Envelope
from postline.spool.interface import AcceptBatch

ENV = Envelope("c.example", "a@sender.example", ("b@example.com",), None, "7BIT",
               False, None, False)  # fmt: skip


def _take(chunks: list[bytes]) -> str | None:
    """The refusal of a message fed in these chunks, or None when it is taken."""

    async def run() -> str | None:
        async def accept(batch: AcceptBatch) -> None:
            return None

        with tempfile.TemporaryDirectory() as tmp:
            intake = RelayIntake(accept=accept, node="pl1", hostname="mx.example",
                                 message_id_host="mx.example", max_age=60.0,
                                 max_header_bytes=1 << 20, data_dir=tmp)  # fmt: skip
            incoming = intake.begin(ENV, tenant="t", client_ip="127.0.0.1", protocol="ESMTP")
            try:
                for chunk in chunks:
                    incoming.write(chunk)
                await incoming.finish()
            except Refused as exc:
                return exc.reply
            finally:
                incoming.discard()
            return None

    return asyncio.run(run())


@settings(max_examples=150, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 40) | st.integers(995, 1002), min_size=1, max_size=6),
    cuts=st.lists(st.integers(0, 7000), max_size=8),
)
def test_refused_iff_a_line_is_longer_than_998(lengths: list[int], cuts: list[int]) -> None:
    body = b"".join(b"x" * n + b"\r\n" for n in lengths)
    data = b"From: a@sender.example\r\nSubject: s\r\n\r\n" + body
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    reply = _take([c for c in chunks if c])
    if max(lengths) > 998:
        assert reply == S554_LINE_TOO_LONG
    else:
        assert reply is None


def test_a_998_octet_line_split_before_its_crlf_is_taken() -> None:
    line = b"y" * 998
    head = b"From: a@sender.example\r\n\r\n"
    assert _take([head + line[:500], line[500:] + b"\r", b"\n"]) is None
    assert _take([head + line[:500], line[500:] + b"z\r", b"\n"]) == S554_LINE_TOO_LONG
