"""Bearer-key authentication for ``/v3/*`` with a short-lived cache.

Keys are created and revoked by ``postline keys`` in another process, so the cache holds a
positive answer for a few seconds only: a revoked key stops working within ``ttl``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from postline.api.errors import unauthorized
from postline.api.types import Request
from postline.keys import ApiKey, KeyStore

INVALID_KEY = "The provided authorization grant is invalid, expired, or revoked"
# Real keys are SG.<22>.<43>, 69 characters; a longer token is invalid without a lookup and
# is never cached (30 tokens of 20 MB each once grew the node by 1 GB for good).
MAX_TOKEN = 256
_ENTRY_BYTES = 200  # what a cache entry costs beside its key: dict slot, tuple, str header


class KeyCache:
    """Key lookups for ``ttl`` seconds (0.5 s for unknown keys), bounded in entries and bytes;
    past either bound the oldest entries go first."""

    def __init__(
        self,
        store: KeyStore,
        ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_entries: int = 10_000,
        max_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self._store = store
        self._ttl = ttl
        self._clock = clock
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}
        self.bytes = 0

    def lookup(self, key: str) -> ApiKey | None:
        if len(key) > MAX_TOKEN:
            return None
        now = self._clock()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        found = self._store.lookup(key)
        # Unknown keys are cached for a shorter time: a key just created must work at once.
        self._put(key, (now + (self._ttl if found else 0.5), found))
        return found

    def _put(self, key: str, entry: tuple[float, ApiKey | None]) -> None:
        if self._cache.pop(key, None) is None:
            self.bytes += len(key) + _ENTRY_BYTES
        self._cache[key] = entry  # (re)inserted last: the dict's order is the eviction order
        while len(self._cache) > self._max_entries or self.bytes > self._max_bytes:
            oldest = next(iter(self._cache))
            del self._cache[oldest]
            self.bytes -= len(oldest) + _ENTRY_BYTES

    def __len__(self) -> int:
        return len(self._cache)


def authenticate(req: Request, keys: KeyCache) -> ApiKey:
    header = req.headers.get("authorization")
    if not header:
        raise unauthorized()
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized()
    key = keys.lookup(token.strip())
    if key is None:
        raise unauthorized(INVALID_KEY)
    return key
