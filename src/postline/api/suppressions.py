"""The suppressions API, as SendGrid's OpenAPI describes it (tsg_suppressions_v3.json).

The lists are the ones the accept stage reads (the spool's ``suppressions`` table); every
read and write is confined to the key's tenant, and each route asks for SendGrid's scope
of its list (``suppression.bounces.read``, ``asm.suppressions.global.create``...).

  GET    /v3/suppression/{list}            ?start_time&end_time&limit&offset&email → [entry]
  DELETE /v3/suppression/{list}            {"delete_all": true} | {"emails": [...]} → 204
  GET    /v3/suppression/{list}/{email}    → [entry], or [] when it is not on the list
  DELETE /v3/suppression/{list}/{email}    → 204 (whether or not it was on the list)
  GET    /v3/suppression/unsubscribes      the global unsubscribes, listed like the others
  POST   /v3/asm/suppressions/global       {"recipient_emails": [...]} → 201, echoed
  GET    /v3/asm/suppressions/global/{email}  → {"recipient_email": ...}, or {}
  DELETE /v3/asm/suppressions/global/{email}  → 204

``{list}`` is bounces, blocks, invalid_emails or spam_reports. The OpenAPI names no 404 for
an address that is not on a list: a read answers empty, a delete 204. Spam reports carry
an ``ip`` that Postline does not know (complaints come by ARF, ``postline inbound``): "".
Unsubscribe groups (``/v3/asm/groups``, their members) are in api/asm_groups.py, added
by :func:`register` with the rest. At most :data:`MAX_RECIPIENT_EMAILS` addresses per POST.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import parse_qsl

import msgspec

from postline.accept.address import is_valid_email
from postline.api.app import App
from postline.api.errors import http_error, unavailable
from postline.api.requests import decode_body, key_tenant
from postline.api.types import Request, Response
from postline.model.events import EventRecord
from postline.spool.interface import SpoolUnavailable, Suppression

if TYPE_CHECKING:  # asm_groups.py builds on this module
    from postline.api.asm_groups import AsmStore

# (email, created, reason, status): one entry of a list, as the store hands it back.
Row = tuple[str, float, str, str]
T = TypeVar("T")
Entry = dict[str, Any]

MAX_LIMIT = 500  # PaginationCommonLimit's maximum; also the page size when none is given
MAX_RECIPIENT_EMAILS = 1000  # addresses per POST of recipient_emails (a bound of Postline's)
_FOREVER = 2.0**62  # a time window's open ends
UNSUBSCRIBES = "unsubscribes"  # the global unsubscribe list


class SuppressionStore(Protocol):
    """What the API needs of the spool (SqliteSpool has it)."""

    async def suppression_page(
        self,
        tenant: str,
        list_name: str,
        window: tuple[float, float],
        like: str,
        page: tuple[int, int],
    ) -> list[Row]: ...

    async def suppression(self, tenant: str, list_name: str, email: str) -> Row | None: ...

    async def remove_suppressions(
        self, tenant: str, list_name: str, emails: Sequence[str] | None
    ) -> int: ...

    async def record(
        self, events: Sequence[EventRecord], suppressions: Sequence[Suppression]
    ) -> None: ...

    @property
    def asm(self) -> AsmStore: ...


# -- the shape of an entry, per list (the OpenAPI's response schemas) -----------------------


def _with_reason_status(r: Row) -> Entry:  # BounceResponse, BlocksResponse
    return {"created": int(r[1]), "email": r[0], "reason": r[2], "status": r[3]}


def _spam_report(r: Row) -> Entry:  # SpamReportsResponse
    return {"created": int(r[1]), "email": r[0], "ip": ""}


def _invalid_email(r: Row) -> Entry:  # InvalidEmail
    return {"created": int(r[1]), "email": r[0], "reason": r[2]}


def _unsubscribe(r: Row) -> Entry:  # ListGlobalSuppression's items
    return {"created": int(r[1]), "email": r[0]}


SHAPES: dict[str, Callable[[Row], Entry]] = {
    "bounces": _with_reason_status,
    "blocks": _with_reason_status,
    "invalid_emails": _invalid_email,
    "spam_reports": _spam_report,
    UNSUBSCRIBES: _unsubscribe,
}


# -- query parameters -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListQuery:
    window: tuple[float, float]  # created in [start, end)
    like: str  # SQL LIKE pattern of the email filter, "\" escapes
    page: tuple[int, int]  # limit, offset


def parse_list_query(query: str) -> ListQuery:
    """``start_time``/``end_time`` (unix seconds, both inclusive), ``limit`` (1..500),
    ``offset`` (>= 0), ``email`` (a prefix; ``%`` matches anything). A bad value is a 400
    naming its parameter; unknown parameters are ignored."""
    params: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        params.setdefault(name, value)
    start = _integer(params, "start_time", None, None)
    end = _integer(params, "end_time", None, None)
    limit = _integer(params, "limit", 1, MAX_LIMIT)
    offset = _integer(params, "offset", 0, None)
    window = (_clamp(start, -_FOREVER), _clamp(None if end is None else end + 1, _FOREVER))
    page = (MAX_LIMIT if limit is None else limit, int(_clamp(offset, 0)))
    return ListQuery(window, email_like(params.get("email", "")), page)


def _integer(params: dict[str, str], name: str, low: int | None, high: int | None) -> int | None:
    raw = params.get(name)
    if raw is None:
        return None
    try:
        value = int(raw.strip(), 10)
    except ValueError:
        value = None
    if value is None or (low is not None and value < low) or (high is not None and value > high):
        raise http_error(400, f"{name} must be {_bounds(low, high)}", name)
    return value


def _clamp(value: int | None, default: float) -> float:
    """Within what SQLite's integers hold (an offset of 10**30 is simply past the end)."""
    return default if value is None else max(-_FOREVER, min(_FOREVER, value))


def _bounds(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f"an integer from {low} to {high}"
    if low is not None:
        return f"an integer of at least {low}"
    return "an integer (unix seconds)"


def email_like(prefix: str) -> str:
    """SendGrid's EmailPartialMatch as a LIKE pattern: ``sales`` → ``sales%``, and ``%``
    stays a wildcard (``%market%tree``); ``_`` and ``\\`` match themselves."""
    escaped = prefix.lower().replace("\\", "\\\\").replace("_", "\\_")
    return escaped + "%"


# -- request bodies ---------------------------------------------------------------------


class DeleteMany(msgspec.Struct):
    delete_all: bool | None = None
    emails: list[str] | None = None


class RecipientEmails(msgspec.Struct):
    recipient_emails: list[str]


def _emails_to_delete(body: DeleteMany) -> list[str] | None:
    """The addresses a collection DELETE names, or None for every one."""
    if body.delete_all and body.emails:
        raise http_error(400, "delete_all and emails cannot both be set", "delete_all")
    if body.delete_all:
        return None
    if not body.emails:
        raise http_error(400, "set delete_all to true, or list the emails to delete", "emails")
    return body.emails


def recipient_emails(req: Request) -> list[str]:
    """The body's ``recipient_emails``: valid addresses, at most MAX_RECIPIENT_EMAILS."""
    emails = decode_body(req, RecipientEmails).recipient_emails
    if len(emails) > MAX_RECIPIENT_EMAILS:
        message = f"recipient_emails may list at most {MAX_RECIPIENT_EMAILS} addresses"
        raise http_error(400, message, "recipient_emails")
    _check_emails(emails, "recipient_emails")
    return emails


def _check_emails(emails: list[str], field: str) -> None:
    for i, email in enumerate(emails):
        if not is_valid_email(email):
            raise http_error(400, f"{email!r} is not a valid email address", f"{field}.{i}")


# -- handlers ---------------------------------------------------------------------------


@contextlib.contextmanager
def _storage() -> Iterator[None]:
    try:
        yield
    except SpoolUnavailable as exc:
        raise unavailable(exc.reason, exc.retry_after) from None


def _json(status: int, body: object) -> Response:
    return Response(status, msgspec.json.encode(body))


NO_CONTENT = Response(204, content_type=None)


class SuppressionList:
    """The endpoints of one list (``/v3/suppression/<name>``)."""

    def __init__(self, store: SuppressionStore, name: str) -> None:
        self._store = store
        self._name = name
        self._shape = SHAPES[name]

    async def list_entries(self, req: Request) -> Response:
        q = parse_list_query(req.query)
        with _storage():
            rows = await self._store.suppression_page(
                key_tenant(req), self._name, q.window, q.like, q.page
            )
        return _json(200, [self._shape(r) for r in rows])

    async def get_one(self, req: Request, params: dict[str, str]) -> Response:
        with _storage():
            row = await self._store.suppression(key_tenant(req), self._name, params["email"])
        return _json(200, [] if row is None else [self._shape(row)])

    async def delete_one(self, req: Request, params: dict[str, str]) -> Response:
        with _storage():
            await self._store.remove_suppressions(key_tenant(req), self._name, [params["email"]])
        return NO_CONTENT

    async def delete_many(self, req: Request) -> Response:
        emails = _emails_to_delete(decode_body(req, DeleteMany))
        with _storage():
            await self._store.remove_suppressions(key_tenant(req), self._name, emails)
        return NO_CONTENT


class GlobalUnsubscribes:
    """``/v3/asm/suppressions/global``: the ``unsubscribes`` list, SendGrid's ASM spelling."""

    def __init__(self, store: SuppressionStore, clock: Callable[[], float]) -> None:
        self._store = store
        self._clock = clock

    async def add(self, req: Request) -> Response:
        emails = recipient_emails(req)
        tenant, now = key_tenant(req), self._clock()
        entries = [Suppression(tenant, UNSUBSCRIBES, e, created=now) for e in emails]
        with _storage():
            await self._store.record([], entries)
        return _json(201, {"recipient_emails": emails})

    async def get_one(self, req: Request, params: dict[str, str]) -> Response:
        with _storage():
            row = await self._store.suppression(key_tenant(req), UNSUBSCRIBES, params["email"])
        return _json(200, {} if row is None else {"recipient_email": row[0]})

    async def delete_one(self, req: Request, params: dict[str, str]) -> Response:
        with _storage():
            await self._store.remove_suppressions(key_tenant(req), UNSUBSCRIBES, [params["email"]])
        return NO_CONTENT


LISTS = ("bounces", "blocks", "invalid_emails", "spam_reports")  # with get/delete one and many


def register(app: App, store: SuppressionStore, clock: Callable[[], float]) -> None:
    """Add every suppressions route to ``app``."""
    for name in LISTS:
        lst, base = SuppressionList(store, name), f"/v3/suppression/{name}"
        read, delete = f"suppression.{name}.read", f"suppression.{name}.delete"
        app.add("GET", base, lst.list_entries, scope=read)
        app.add("DELETE", base, lst.delete_many, scope=delete)
        app.add_pattern("GET", base + "/{email}", lst.get_one, scope=read)
        app.add_pattern("DELETE", base + "/{email}", lst.delete_one, scope=delete)
    unsubscribes = SuppressionList(store, UNSUBSCRIBES)
    scope = "suppression.unsubscribes.read"
    app.add("GET", "/v3/suppression/unsubscribes", unsubscribes.list_entries, scope=scope)
    glob, one = GlobalUnsubscribes(store, clock), "/v3/asm/suppressions/global/{email}"
    app.add("POST", "/v3/asm/suppressions/global", glob.add, scope="asm.suppressions.global.create")
    app.add_pattern("GET", one, glob.get_one, scope="asm.suppressions.global.read")
    app.add_pattern("DELETE", one, glob.delete_one, scope="asm.suppressions.global.delete")
    from postline.api import asm_groups  # it imports this module's helpers

    asm_groups.register(app, store.asm, clock)
