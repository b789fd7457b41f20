"""The node ↔ relay worker link (smtp/link.py) over a real socketpair."""

from __future__ import annotations

import asyncio
import socket

import msgspec
import pytest

from postline.smtp.link import Failure, Link, LinkClosed, RemoteError

_int = msgspec.msgpack.Decoder(int).decode


async def _pair(
    handler_a: object, handler_b: object
) -> tuple[Link, Link, list[asyncio.Task[None]]]:
    sa, sb = socket.socketpair()
    ra, wa = await asyncio.open_unix_connection(sock=sa)
    rb, wb = await asyncio.open_unix_connection(sock=sb)
    a = Link(sa, ra, wa, handler_a)  # type: ignore[arg-type]
    b = Link(sb, rb, wb, handler_b)  # type: ignore[arg-type]
    tasks = [asyncio.create_task(a.serve()), asyncio.create_task(b.serve())]
    return a, b, tasks


async def _nothing(name: str, body: msgspec.Raw) -> None:
    raise Failure("unknown_method", name)


def test_calls_both_ways_out_of_order_and_errors() -> None:
    async def main() -> None:
        async def slow_square(name: str, body: msgspec.Raw) -> int:
            n = _int(body)
            if name == "refuse":
                raise Failure("unavailable", f"no room for {n}")
            if name == "crash":
                raise ValueError("bug")
            await asyncio.sleep(0.01 * (5 - n))  # the first asked answers last
            return n * n

        async def echo(name: str, body: msgspec.Raw) -> str:
            return name

        a, b, tasks = await _pair(echo, slow_square)
        results = await asyncio.gather(*(a.call("square", n) for n in range(5)))
        assert [_int(r) for r in results] == [0, 1, 4, 9, 16]
        assert msgspec.msgpack.decode(await b.call("hello")) == "hello"  # the other way
        with pytest.raises(RemoteError) as err:
            await a.call("refuse", 3)
        assert err.value.kind == "unavailable"
        assert msgspec.msgpack.decode(err.value.detail) == "no room for 3"
        with pytest.raises(RemoteError) as err:
            await a.call("crash", 1)
        assert err.value.kind == "error"
        a.close()
        await asyncio.gather(*tasks)

    asyncio.run(main())


def test_a_closed_side_fails_every_waiting_call() -> None:
    async def main() -> None:
        gate = asyncio.Event()

        async def never(name: str, body: msgspec.Raw) -> None:
            await gate.wait()

        a, b, tasks = await _pair(_nothing, never)
        calls = [asyncio.create_task(a.call("wait", n)) for n in range(3)]
        await asyncio.sleep(0.05)
        b.close()  # the worker died
        for call in calls:
            with pytest.raises(LinkClosed):
                await call
        with pytest.raises(LinkClosed):
            await a.call("after", 0)
        gate.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
