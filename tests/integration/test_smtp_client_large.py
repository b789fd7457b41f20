"""Large message bodies through the SMTP client: streamed in chunks, never copied whole.

A relayed message of up to 30 MB is delivered as received; the send path may hold it once
(the caller's ``bytes``) plus bounded buffers (issue 13: "a 30 MB message must not cost
100+ MB"). The 30 MB test measures the client's Python allocations with tracemalloc while
the destination runs in a subprocess: tracemalloc counts every thread of a process, and
the fake destination itself buffers the whole message to un-stuff it, so in-process it
would hide what the client costs. Before streaming, the same test measured a peak of
78.5 MiB on asyncio and 57.2 MiB on uvloop for this 28.6 MiB body (the stuffed copy, the
copy with the terminator, the split lines of the line-length check and, on asyncio, the
transport's buffer); streamed, 0.76 MiB.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop

from postline.deliver import errors, message_data
from postline.deliver.connection import SmtpConnection, open_connection
from postline.deliver.errors import Stage
from postline.model.outcomes import Scope
from postline.testing.fake_smtp import FakeSmtpServer

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")
Runner = Callable[[Coroutine[Any, Any, T]], T]
CHUNK = message_data.BODY_CHUNK
MiB = 1 << 20
LINE = b"QUJD" * 19 + b"QU\r\n"  # 80 octets, like a base64 attachment


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner[Any]:
    if request.param == "uvloop":
        return uvloop.run
    return asyncio.run


async def connect(port: int, *, data_timeout: float = 30.0) -> SmtpConnection:
    return await open_connection(
        "127.0.0.1",
        port,
        helo="client.test",
        connect_timeout=2.0,
        # a data timeout shorter than this would only act once the command timer fires
        command_timeout=min(5.0, data_timeout),
        data_timeout=data_timeout,
    )


def _fill(buf: bytearray, until: int) -> None:
    """Append lines until ``buf`` ends with a CRLF at offset ``until`` exactly."""
    while until - len(buf) >= len(LINE) + 2:
        buf += LINE
    rest = until - len(buf)
    assert rest >= 2
    buf += b"x" * (rest - 2) + b"\r\n"


def dotted_body(size: int) -> bytes:
    """``size`` octets of lines, with lines starting with "." at the chunk boundaries.

    The first line starts with "."; at boundary k the next chunk begins with a "." line
    whose preceding CRLF ends the previous chunk (k % 3 == 0: the line is "." alone, which
    unstuffed would end the message; k % 3 == 2: ".x..."), or a CRLF is cut between its CR
    and its LF (k % 3 == 1). The last line is ".end" without CRLF.
    """
    buf = bytearray(b".first line\r\n")
    for k in range(1, size // CHUNK):
        target = k * CHUNK
        if k % 3 == 1:
            _fill(buf, target + 1)
            buf += b"..two dots\r\n"
        else:
            _fill(buf, target)
            buf += b".\r\n" if k % 3 == 0 else b".x" + b"y" * 70 + b"\r\n"
    _fill(buf, size - 4)
    buf += b".end"
    return bytes(buf)


SERVER = """
import asyncio, sys
from pathlib import Path
from postline.testing.fake_smtp import FakeSmtpServer

async def main(out: str) -> None:
    def save(message):
        Path(out).write_bytes(message.data)
        print("received", len(message.data), flush=True)
    async with FakeSmtpServer(keep=False, on_receive=save) as srv:
        print(srv.port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main(sys.argv[1]))
"""


@pytest.fixture
def destination(tmp_path: Path) -> Iterator[tuple[int, Path, subprocess.Popen[str]]]:
    """The fake destination in a subprocess; it writes each message it gets to a file."""
    out = tmp_path / "received.eml"
    args = [sys.executable, "-c", SERVER, str(out)]
    with subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            yield int(proc.stdout.readline()), out, proc
        finally:
            proc.stdin.close()  # the server stops at the end of its stdin
            proc.wait(10)


def test_thirty_megabytes_arrive_byte_identical_without_a_copy(
    run: Runner[int], destination: tuple[int, Path, subprocess.Popen[str]]
) -> None:
    port, out, proc = destination
    body = dotted_body(30_000_000)
    assert body.count(b"\r\n.") >= 100

    async def scenario() -> int:
        conn = await connect(port)
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            tx = await conn.send("a@client.test", ["bob@x.test"], body)
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
        assert tx.delivered == ["bob@x.test"]
        await conn.quit()
        return peak

    peak = run(scenario())
    assert proc.stdout is not None
    assert proc.stdout.readline().split() == ["received", str(len(body) + 2)]
    assert out.read_bytes() == body + b"\r\n"  # the server un-stuffed; ".end" got its CRLF
    print(f"client peak of Python allocations during the send: {peak / MiB:.2f} MiB")
    assert peak < 4 * MiB, f"{peak / MiB:.1f} MiB"


def test_connection_dropped_mid_body_fails_the_send(run: Runner[None]) -> None:
    body = LINE * (8 * MiB // len(LINE))

    async def scenario() -> None:
        async with FakeSmtpServer() as srv:
            conn = await connect(srv.port, data_timeout=20.0)
            with pytest.raises(errors.ConnectionLost) as info:
                await conn.send("a@client.test", ["drop-bob@x.test"], body)
            assert info.value.stage is Stage.BODY and info.value.scope is Scope.SESSION
            assert not conn.is_open
        assert srv.transactions == [] and srv.replies[354] == 1

    run(scenario())


def test_receiver_that_stops_reading_times_out_in_the_body(run: Runner[None]) -> None:
    # The destination reads the first piece of the body, then nothing: the client's
    # transport fills, writing pauses (its buffer stays within a chunk and the high-water
    # mark; it took the whole body before streaming), and the data timeout ends the wait.
    body = LINE * (32 * MiB // len(LINE))

    async def scenario() -> None:
        async with FakeSmtpServer() as srv:
            conn = await connect(srv.port, data_timeout=0.5)
            (session,) = srv._sessions
            absorb = session._absorb

            def absorb_then_stop(chunk: bytes) -> None:
                absorb(chunk)
                assert session.transport is not None
                session.transport.pause_reading()

            session._absorb = absorb_then_stop  # type: ignore[method-assign]
            send = asyncio.ensure_future(conn.send("a@client.test", ["bob@x.test"], body))
            await asyncio.sleep(0.25)
            transport = conn._link._transport
            assert transport is not None
            assert transport.get_write_buffer_size() <= CHUNK + 64 * 1024
            with pytest.raises(errors.Timeout) as info:
                await send
            assert info.value.stage is Stage.BODY
            assert not conn.is_open
        assert srv.transactions == []

    run(scenario())


def test_large_body_over_starttls(run: Runner[None]) -> None:
    # The TLS transport has its own buffer and flow control; pieces may be memoryviews.
    body = dotted_body(3 * MiB)

    async def scenario() -> None:
        async with FakeSmtpServer(starttls=True, size=0) as srv:
            conn = await connect(srv.port)
            assert conn.tls
            tx = await conn.send("a@client.test", ["bob@x.test"], body)
            assert tx.delivered == ["bob@x.test"] and tx.tls
            await conn.quit()
        (got,) = srv.transactions
        assert got.data == body + b"\r\n" and got.params[0] == f"SIZE={len(body) + 2}"

    run(scenario())
