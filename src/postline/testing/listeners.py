"""Closing an in-process asyncio server without leaking a socket (test servers).

Python 3.11's asyncio leaks the socket of a connection accepted just before its server
closed: the accept task's ``Server._attach`` asserts the server is open, the task fails and
drops the socket unclosed. Its ResourceWarning came later, as an error in whichever test
the garbage collector ran during (a property test failed so once in a full run).
:func:`close_listener` stops accepting first, lets the accepts under way reach their
protocols, then closes the server; the caller then closes or aborts those connections.
"""

from __future__ import annotations

import asyncio

ACCEPT_WAIT = 2.0  # seconds to wait for the accepts under way


async def close_listener(server: asyncio.Server) -> None:
    loop = asyncio.get_running_loop()
    for sock in server.sockets:
        loop.remove_reader(sock.fileno())
    deadline = loop.time() + ACCEPT_WAIT
    while accepting() and loop.time() < deadline:
        await asyncio.sleep(0)
    server.close()


def accepting() -> bool:
    """Whether this loop still has a connection a listener accepted and asyncio has not
    yet handed to its protocol (its accept task)."""
    return any(
        t.get_coro().__qualname__.endswith("_accept_connection2")  # type: ignore[union-attr]
        for t in asyncio.all_tasks()
    )
