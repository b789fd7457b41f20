"""What every v3 endpoint does with a request: the key's tenant, a JSON body decoded into
a struct, a bounded integer query parameter; each failure a SendGrid error body."""

from __future__ import annotations

from typing import TypeVar

import msgspec

from postline.accept.validate import decode_error
from postline.api.errors import HttpError, http_error, unauthorized
from postline.api.types import Request

T = TypeVar("T")


def key_tenant(req: Request) -> str:
    """The tenant of the request's key (the router authenticated every /v3/ path first)."""
    if req.key is None:
        raise unauthorized()
    return req.key.tenant


def decode_body(req: Request, kind: type[T]) -> T:
    """The JSON body as ``kind``; 400 naming the field that does not fit."""
    if not req.body.strip():
        raise http_error(400, "request body is empty: send a JSON object")
    try:
        return msgspec.json.decode(req.body, type=kind)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise HttpError(400, [decode_error(exc)]) from None


def int_param(params: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    """A decimal query parameter within [low, high]; ``default`` when absent."""
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw.strip(), 10)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise http_error(400, f"{name} must be an integer from {low} to {high}", name)
    return value
