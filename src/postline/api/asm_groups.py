"""Unsubscribe groups (SendGrid's ASM), as tsg_suppressions_v3.json describes them.

  POST   /v3/asm/groups                     {name ≤30, description ≤100, is_default} → 201
  GET    /v3/asm/groups                     ?id=1&id=2 (optional) → [group + unsubscribes]
  GET    /v3/asm/groups/{group_id}          → group + unsubscribes
  PATCH  /v3/asm/groups/{group_id}          {name?, description?, is_default?} → 201 group
  DELETE /v3/asm/groups/{group_id}          → 204 (its members go with it)
  POST   /v3/asm/groups/{group_id}/suppressions         {"recipient_emails": [...]} → 201 echo
  GET    /v3/asm/groups/{group_id}/suppressions         → ["a@x", ...]
  POST   /v3/asm/groups/{group_id}/suppressions/search  {"recipient_emails": [...]} → members
  DELETE /v3/asm/groups/{group_id}/suppressions/{email} → 204
  GET    /v3/asm/suppressions               → [{email, group_id, group_name, created_at}]
  GET    /v3/asm/suppressions/{email}       → {"suppressions": [group + suppressed]}

The accept stage drops a recipient that unsubscribed from the group a message names
(``asm.group_id``, X-SMTPAPI ``asm_group_id``), with "Unsubscribed Address"
(backends/sqlite/asm.py ``group_drops``). Every group belongs to the key's tenant: another
tenant's group id is a 404, like one that never existed. Where Postline differs: adding
members to a group that does not exist is a 404 (SendGrid puts them on the global list,
which turns a typo into a global unsubscribe), and the lists are paged (``limit`` up to
10,000, ``offset``) instead of unbounded. Bounds: 200 groups per tenant (SendGrid's),
MAX_RECIPIENT_EMAILS (1,000) addresses per request, 200 ``id`` parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol
from urllib.parse import parse_qsl

import msgspec

from postline.api.app import App
from postline.api.errors import http_error, not_found
from postline.api.requests import decode_body, key_tenant
from postline.api.suppressions import (
    NO_CONTENT,
    _integer,
    _json,
    _storage,
    recipient_emails,
)
from postline.api.types import Request, Response
from postline.backends.sqlite.asm import Group, GroupChange, MemberRow, Page
from postline.keys import FULL_ACCESS

MAX_GROUPS = 200  # per tenant, as SendGrid allows
MAX_NAME = 30
MAX_DESCRIPTION = 100
MAX_PAGE = 10_000  # rows of a list answer
_MAX_ID = 2**63 - 1


class AsmStore(Protocol):
    """What the routes need (backends/sqlite/asm.py ``SqliteAsmGroups`` has it)."""

    async def groups(self, tenant: str, ids: list[int] | None = None) -> list[Group]: ...
    async def create(self, tenant: str, change: GroupChange, limit: int) -> Group | str: ...
    async def update(
        self, tenant: str, group_id: int, change: GroupChange
    ) -> Group | str | None: ...
    async def delete(self, tenant: str, group_id: int) -> bool: ...
    async def add_members(
        self, tenant: str, group_id: int, emails: Sequence[str], created: float
    ) -> bool: ...
    async def remove_member(self, tenant: str, group_id: int, email: str) -> bool: ...
    async def members(self, tenant: str, group_id: int, page: Page) -> list[str] | None: ...
    async def search(
        self, tenant: str, group_id: int, emails: Sequence[str]
    ) -> list[str] | None: ...
    async def all_members(self, tenant: str, page: Page) -> list[MemberRow]: ...
    async def email_groups(self, tenant: str, email: str) -> list[tuple[Group, bool]]: ...


class GroupBody(msgspec.Struct):
    name: str | None = None
    description: str | None = None
    is_default: bool | None = None


def _shape(g: Group) -> dict[str, Any]:  # SuppressionGroup
    return {
        "id": g.id,
        "name": g.name,
        "description": g.description,
        "is_default": g.is_default,
        "unsubscribes": g.unsubscribes,
    }


def _change(body: GroupBody, *, creating: bool) -> GroupChange:
    """The body checked against the OpenAPI's bounds; a 400 naming the field."""
    if creating and not (body.name or "").strip():
        raise http_error(400, "name is required", "name")
    if body.name is not None and not body.name.strip():
        raise http_error(400, "name cannot be empty", "name")
    if body.name is not None and len(body.name) > MAX_NAME:
        raise http_error(400, f"name may not be longer than {MAX_NAME} characters", "name")
    if body.description is not None and len(body.description) > MAX_DESCRIPTION:
        message = f"description may not be longer than {MAX_DESCRIPTION} characters"
        raise http_error(400, message, "description")
    return GroupChange(body.name, body.description, body.is_default)


def _group_id(params: dict[str, str]) -> int:
    """The path's group id; anything but an integer names no group (404)."""
    raw = params["group_id"]
    if not raw.isascii() or not raw.isdigit() or int(raw) > _MAX_ID:
        raise not_found()
    return int(raw)


def _page(query: str) -> Page:
    params: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        params.setdefault(name, value)
    limit = _integer(params, "limit", 1, MAX_PAGE)
    offset = _integer(params, "offset", 0, _MAX_ID)
    return (MAX_PAGE if limit is None else limit, offset or 0)


def _ids(query: str) -> list[int] | None:
    """``?id=1&id=2``: the groups asked for, or None for all of them."""
    raw = [v for k, v in parse_qsl(query, keep_blank_values=True) if k == "id"]
    if not raw:
        return None
    if len(raw) > MAX_GROUPS:
        raise http_error(400, f"at most {MAX_GROUPS} id parameters", "id")
    if not all(v.isascii() and v.isdigit() and int(v) <= _MAX_ID for v in raw):
        raise http_error(400, "id must be an integer group id", "id")
    return sorted({int(v) for v in raw})


class AsmGroups:
    """The routes of :mod:`postline.api.asm_groups` over one store."""

    def __init__(self, store: AsmStore, clock: Callable[[], float]) -> None:
        self._store = store
        self._clock = clock

    async def create(self, req: Request) -> Response:
        change = _change(decode_body(req, GroupBody), creating=True)
        with _storage():
            made = await self._store.create(key_tenant(req), change, MAX_GROUPS)
        if isinstance(made, str):
            raise http_error(400, made, "name" if made.startswith("name") else None)
        return _json(201, {k: v for k, v in _shape(made).items() if k != "unsubscribes"})

    async def list_groups(self, req: Request) -> Response:
        ids = _ids(req.query)
        with _storage():
            groups = await self._store.groups(key_tenant(req), ids)
        return _json(200, [_shape(g) for g in groups])

    async def get_group(self, req: Request, params: dict[str, str]) -> Response:
        with _storage():
            found = await self._store.groups(key_tenant(req), [_group_id(params)])
        if not found:
            raise not_found()
        return _json(200, _shape(found[0]))

    async def update_group(self, req: Request, params: dict[str, str]) -> Response:
        group_id = _group_id(params)
        change = _change(decode_body(req, GroupBody), creating=False)
        with _storage():
            done = await self._store.update(key_tenant(req), group_id, change)
        if done is None:
            raise not_found()
        if isinstance(done, str):
            raise http_error(400, done, "name")
        return _json(201, _shape(done))

    async def delete_group(self, req: Request, params: dict[str, str]) -> Response:
        with _storage():
            if not await self._store.delete(key_tenant(req), _group_id(params)):
                raise not_found()
        return NO_CONTENT

    async def add_members(self, req: Request, params: dict[str, str]) -> Response:
        group_id, emails = _group_id(params), recipient_emails(req)
        with _storage():
            if not await self._store.add_members(key_tenant(req), group_id, emails, self._clock()):
                raise not_found()
        return _json(201, {"recipient_emails": emails})

    async def members(self, req: Request, params: dict[str, str]) -> Response:
        group_id, page = _group_id(params), _page(req.query)
        with _storage():
            found = await self._store.members(key_tenant(req), group_id, page)
        if found is None:
            raise not_found()
        return _json(200, found)

    async def search(self, req: Request, params: dict[str, str]) -> Response:
        group_id, emails = _group_id(params), recipient_emails(req)
        with _storage():
            found = await self._store.search(key_tenant(req), group_id, emails)
        if found is None:
            raise not_found()
        return _json(200, found)

    async def remove_member(self, req: Request, params: dict[str, str]) -> Response:
        group_id = _group_id(params)
        with _storage():
            if not await self._store.remove_member(key_tenant(req), group_id, params["email"]):
                raise not_found()
        return NO_CONTENT

    async def all_suppressions(self, req: Request) -> Response:
        page = _page(req.query)
        with _storage():
            rows = await self._store.all_members(key_tenant(req), page)
        body = [
            {"email": e, "group_id": g, "group_name": n, "created_at": int(c)}
            for e, g, n, c in rows
        ]
        return _json(200, body)

    async def email_groups(self, req: Request, params: dict[str, str]) -> Response:
        with _storage():
            rows = await self._store.email_groups(key_tenant(req), params["email"])
        shown = [
            {k: v for k, v in _shape(g).items() if k != "unsubscribes"} | {"suppressed": s}
            for g, s in rows
        ]
        return _json(200, {"suppressions": shown})


def _scope(sendgrid: str, fallback: str) -> str:
    """SendGrid's scope for group members (``asm.groups.suppressions.*``) once keys.py
    knows it; until then the group's own scope, so that full-access keys are let in."""
    return sendgrid if sendgrid in FULL_ACCESS else fallback


def register(app: App, store: AsmStore, clock: Callable[[], float]) -> None:
    """Add the unsubscribe-group routes to ``app``."""
    h, base, one = AsmGroups(store, clock), "/v3/asm/groups", "/v3/asm/groups/{group_id}"
    members = one + "/suppressions"
    m_read = _scope("asm.groups.suppressions.read", "asm.groups.read")
    m_create = _scope("asm.groups.suppressions.create", "asm.groups.update")
    m_delete = _scope("asm.groups.suppressions.delete", "asm.groups.update")
    app.add("POST", base, h.create, scope="asm.groups.create")
    app.add("GET", base, h.list_groups, scope="asm.groups.read")
    app.add_pattern("GET", one, h.get_group, scope="asm.groups.read")
    app.add_pattern("PATCH", one, h.update_group, scope="asm.groups.update")
    app.add_pattern("DELETE", one, h.delete_group, scope="asm.groups.delete")
    app.add_pattern("POST", members, h.add_members, scope=m_create)
    app.add_pattern("GET", members, h.members, scope=m_read)
    app.add_pattern("POST", members + "/search", h.search, scope=m_read)  # before {email}
    app.add_pattern("DELETE", members + "/{email}", h.remove_member, scope=m_delete)
    app.add("GET", "/v3/asm/suppressions", h.all_suppressions, scope=m_read)
    app.add_pattern("GET", "/v3/asm/suppressions/{email}", h.email_groups, scope=m_read)
