"""A private event loop on a daemon thread, for asyncpg behind a synchronous interface.

The KeyStore protocol is synchronous (``KeyCache.lookup`` runs on the node's loop, the CLI
has none). asyncpg needs a loop of its own that no caller blocks, so the store runs one
here: callers hand it coroutines and wait on the result from their own thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the thread's loop; its result, or its exception, here.

        Never call from the loop's own thread (it would wait on itself)."""
        assert threading.current_thread() is not self._thread
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()  # the coroutine stops too, rather than finishing unobserved
            raise

    def stop(self) -> None:
        """Stop the loop and wait for the thread (cancel the loop's tasks first)."""
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
        self.loop.close()
