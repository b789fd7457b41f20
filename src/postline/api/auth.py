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


class KeyCache:
    def __init__(
        self, store: KeyStore, ttl: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._store = store
        self._ttl = ttl
        self._clock = clock
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}

    def lookup(self, key: str) -> ApiKey | None:
        now = self._clock()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        found = self._store.lookup(key)
        if len(self._cache) > 10_000:
            self._cache.clear()
        # Unknown keys are cached for a shorter time: a key just created must work at once.
        self._cache[key] = (now + (self._ttl if found else 0.5), found)
        return found


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
