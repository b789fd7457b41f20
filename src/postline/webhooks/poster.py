"""One POST of a batch to a receiver: aiohttp, signed when the webhook is, outcome as a value.

One ``ClientSession`` per node (the component's), keep-alive connections bounded in total
and per host, a total timeout of ``[webhooks] timeout`` per post, redirects not followed
(SendGrid does not follow them either), the guarded resolver of addresses.py at every new
connection and aiohttp's DNS cache off (so a rebinding is seen at the next connection).
Any failure (a non-2xx, a timeout, a refused or reset connection, a refused address) is a
:class:`Posted` with ``ok`` false and a reason; nothing is raised.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from postline import __version__
from postline.config import DnsConfig, WebhooksConfig
from postline.webhooks.addresses import GuardedResolver, literal_refusal
from postline.webhooks.signing import Signer

USER_AGENT = f"Postline Event API/{__version__}"
_LIMIT = 256  # connections in all
_LIMIT_PER_HOST = 8  # one per webhook in use, room for replays and tests


@dataclass(frozen=True, slots=True)
class Posted:
    ok: bool
    status: int | None = None  # the receiver's HTTP status, when it answered
    reason: str = ""  # why it failed


class Poster:
    def __init__(
        self,
        cfg: WebhooksConfig,
        dns: DnsConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.resolver = GuardedResolver(cfg.allow_private, dns.nameservers, float(dns.timeout))
        self.clock = clock
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=self.resolver,
                limit=_LIMIT,
                limit_per_host=_LIMIT_PER_HOST,
                use_dns_cache=False,
            )
            timeout = aiohttp.ClientTimeout(total=float(self.cfg.timeout))
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        return self._session

    async def post(self, url: str, body: bytes, signer: Signer | None) -> Posted:
        refused = literal_refusal(url, self.cfg.allow_private)
        if refused is not None:
            return Posted(False, None, f"refused: {refused}")
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if signer is not None:
            headers.update(signer.headers(body, int(self.clock())))
        try:
            async with self._open().post(
                url, data=body, headers=headers, allow_redirects=False
            ) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    return Posted(True, resp.status)
                return Posted(False, resp.status, f"the receiver answered {resp.status}")
        except TimeoutError:
            return Posted(False, None, f"no answer within {float(self.cfg.timeout):g} s")
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return Posted(False, None, f"{type(exc).__name__}: {exc}"[:500])

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        await asyncio.sleep(0)  # let aiohttp's transports close (its documented advice)
