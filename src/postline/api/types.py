"""The HTTP vocabulary every endpoint speaks (like starlette's types.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from postline.keys import ApiKey


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # names lower-cased; repeated headers joined with ", "
    body: bytes
    remote: str = ""
    key: ApiKey | None = None  # set by auth for /v3/* paths


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str | None = "application/json"


@dataclass(slots=True)
class Refusal:
    """An answer given when a request's headers are in, before its body is read."""

    response: Response
    delay: float = 0.0  # seconds to hold it (an address that keeps failing auth)


Handler = Callable[[Request], Awaitable[Response]]
# Judges a request at headers-complete (``body`` still empty): None lets it go on.
Admit = Callable[[Request], Refusal | None]
