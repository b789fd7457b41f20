"""``POST /v3/mail/send`` — SendGrid v3 compatible.

Flow: size and encoding checks → JSON decode (types) → semantic validation (all errors at
once) → sandbox short-circuit (200, nothing stored) → drop suppressed recipients →
expand into messages → ``Spool.accept`` (durable, group-committed) → 202 + X-Message-Id.
Any error before the spool write changes nothing; a spool that cannot write answers 503.
"""

from __future__ import annotations

import gzip
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence

import msgspec

from postline.accept.expand import asm_groups, expand, unknown_groups
from postline.accept.validate import MAX_MESSAGE_BYTES, decode_error, message_size, validate
from postline.api.errors import HttpError, http_error, too_large, unavailable
from postline.api.types import Request, Response
from postline.model.domain import email_key
from postline.model.ids import new_x_message_id
from postline.model.mail import MailSendRequest, decode_request
from postline.spool.interface import AcceptBatch, SpoolUnavailable, UnknownGroups

# (tenant, recipients, asm groups) -> email -> drop reason; UnknownGroups (spool.suppressed)
Suppressed = Callable[[str, Sequence[str], Sequence[int]], Awaitable[dict[str, str]]]
Accept = Callable[[AcceptBatch], Awaitable[None]]


class MailSend:
    def __init__(
        self,
        *,
        accept: Accept,
        suppressed: Suppressed,
        node: str,
        host: str,
        max_age: float,
        max_body: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._accept = accept
        self._suppressed = suppressed
        self._node = node
        self._host = host
        self._max_age = max_age
        self._max_body = max_body
        self._clock = clock

    async def __call__(self, req: Request) -> Response:
        mail = self._decode(self._raw_body(req))
        now = self._clock()
        if message_size(mail) >= MAX_MESSAGE_BYTES:
            raise too_large()
        errors = validate(mail, now)
        if errors:
            raise HttpError(400, errors)
        ms = mail.mail_settings
        if ms is not None and ms.sandbox_mode is not None and ms.sandbox_mode.enable:
            return Response(200)
        x_id = new_x_message_id()
        tenant = req.key.tenant if req.key else "default"
        try:  # one read: the global lists, the asm group's members, that the groups exist
            drops = await self._suppressed(tenant, _emails(mail), asm_groups(mail))
        except UnknownGroups as exc:
            raise HttpError(400, unknown_groups(mail, exc.group_ids)) from None
        except SpoolUnavailable as exc:  # the lists cannot be read (cluster: PostgreSQL down)
            raise unavailable(exc.reason, exc.retry_after) from None
        batch = expand(
            mail,
            tenant=req.key.tenant if req.key else "default",
            node=self._node,
            host=self._host,
            now=now,
            max_age=self._max_age,
            x_message_id=x_id,
            suppressed=_dropper(drops) if drops else None,
        )
        try:
            await self._accept(batch)
        except SpoolUnavailable as exc:
            raise unavailable(exc.reason, exc.retry_after) from None
        return Response(202, headers=[("X-Message-Id", x_id)], content_type=None)

    def _raw_body(self, req: Request) -> bytes:
        encoding = req.headers.get("content-encoding", "").lower()
        if encoding in ("", "identity"):
            return req.body
        if encoding != "gzip":
            raise http_error(415, f"unsupported Content-Encoding {encoding!r}; use gzip or none")
        return _gunzip(req.body, self._max_body)

    @staticmethod
    def _decode(raw: bytes) -> MailSendRequest:
        if not raw.strip():
            raise http_error(400, "request body is empty: send a JSON object")
        try:
            return decode_request(raw)
        except UnicodeDecodeError:
            raise http_error(415, "Invalid UTF8 in request") from None
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            if not _is_utf8(raw):
                raise http_error(415, "Invalid UTF8 in request") from None
            raise HttpError(400, [decode_error(exc)]) from None


def _dropper(drops: dict[str, str]) -> Callable[[Sequence[str]], dict[str, str]]:
    """Of the given addresses, those on a list (keyed as the lists are: ``email_key``)."""
    return lambda emails: {e: drops[k] for e in emails if (k := email_key(e)) in drops}


def _emails(mail: MailSendRequest) -> list[str]:
    out: list[str] = []
    for p in mail.personalizations or ():
        for group in (p.to, p.cc, p.bcc):
            out.extend(a.email for a in group or ())
    return out


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _gunzip(data: bytes, limit: int) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, limit + 1)
    except (zlib.error, gzip.BadGzipFile):
        raise http_error(400, "request body is not valid gzip") from None
    if len(out) > limit:
        raise too_large()
    if not d.eof:  # cut short: zlib returns what it could without an error
        raise http_error(400, "request body is not valid gzip")
    return out
