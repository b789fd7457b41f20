"""The router's pattern routes: ``{name}`` segments, percent-decoded, tried only after the
exact-path lookup misses; 401, 404, 405, 403 in that order as for exact paths."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st

from postline.api.app import App, Pattern
from postline.api.auth import KeyCache
from postline.api.auth_failures import FailedAuth
from postline.api.types import Request, Response
from postline.keys import ApiKey

KEY = "SG.test.key"


class _Keys:
    def __init__(self, scopes: frozenset[str]) -> None:
        self._key = ApiKey("id", "test", "t1", scopes, 0.0)

    def create(self, name: str, tenant: str, scopes: frozenset[str]) -> tuple[str, ApiKey]:
        raise NotImplementedError

    def list(self, tenant: str | None = None) -> list[ApiKey]:
        return [self._key]

    def revoke(self, key_id: str) -> bool:
        return False

    def lookup(self, key: str) -> ApiKey | None:
        return self._key if key == KEY else None


def _app(scopes: frozenset[str] = frozenset({"x.read", "x.delete"})) -> App:
    app = App(KeyCache(_Keys(scopes)), FailedAuth(100, 0.0))

    async def exact(req: Request) -> Response:
        return Response(200, b'"exact"')

    async def one(req: Request, params: dict[str, str]) -> Response:
        return Response(200, json.dumps(params).encode())

    app.add("GET", "/v3/x", exact, scope="x.read")
    app.add("GET", "/v3/x/special", exact, scope="x.read")
    app.add_pattern("GET", "/v3/x/{email}", one, scope="x.read")
    app.add_pattern("DELETE", "/v3/x/{email}", one, scope="x.delete")
    app.add_pattern("GET", "/v3/g/{group_id}/s/{email}", one, scope="x.read")
    return app


def _call(app: App, method: str, path: str, key: str | None = KEY) -> Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return asyncio.run(app(Request(method, path, "", headers, b"")))


def test_value_is_percent_decoded() -> None:
    resp = _call(_app(), "GET", "/v3/x/Bob%2Btag%40example.com")
    assert resp.status == 200
    assert json.loads(resp.body) == {"email": "Bob+tag@example.com"}


def test_two_values() -> None:
    resp = _call(_app(), "GET", "/v3/g/42/s/a%40b.c/")
    assert json.loads(resp.body) == {"group_id": "42", "email": "a@b.c"}


def test_exact_path_wins_over_a_pattern() -> None:
    assert _call(_app(), "GET", "/v3/x/special").body == b'"exact"'
    assert _call(_app(), "GET", "/v3/x").body == b'"exact"'


def test_no_match_is_404_and_wrong_method_405() -> None:
    app = _app()
    assert _call(app, "GET", "/v3/x/a/b").status == 404
    assert _call(app, "GET", "/v3/g//s/a").status == 404  # an empty value never matches
    assert _call(app, "GET", "/v3/y/a").status == 404
    assert _call(app, "POST", "/v3/x/a%40b.c").status == 405
    assert json.loads(_call(app, "PUT", "/v3/x/a").body)["errors"][0]["message"] == (
        "method not allowed"
    )


def test_auth_first_then_scope() -> None:
    assert _call(_app(), "GET", "/v3/x/a", key=None).status == 401
    assert _call(_app(), "GET", "/v3/nowhere/a", key="SG.bad.key").status == 401
    read_only = _app(frozenset({"x.read"}))
    assert _call(read_only, "GET", "/v3/x/a").status == 200
    denied = _call(read_only, "DELETE", "/v3/x/a")
    assert denied.status == 403
    assert json.loads(denied.body)["errors"][0]["message"] == "access forbidden"


def test_escape_that_is_not_utf8_is_404() -> None:
    assert _call(_app(), "GET", "/v3/x/%FF%FE").status == 404


@given(st.text(min_size=1))
def test_any_value_round_trips(value: str) -> None:
    try:
        encoded = quote(value, safe="")
    except UnicodeEncodeError:  # lone surrogates have no UTF-8 form: no URL carries them
        return
    pattern = Pattern.parse("/v3/x/{email}")
    assert pattern.match(f"/v3/x/{encoded}") == {"email": value}


def test_prefix_routes_take_every_method_below_the_prefix() -> None:
    import asyncio

    from postline.api.app import App
    from postline.api.types import Request, Response

    seen: list[str] = []

    async def forward(req: Request) -> Response:
        seen.append(f"{req.method} {req.path}")
        return Response(200)

    async def exact(req: Request) -> Response:
        return Response(204)

    app = App.__new__(App)  # no key store needed: requests below carry no /v3 path auth
    App.__init__(app, keys=None, failures=None)  # type: ignore[arg-type]
    app.add_prefix("/x/events", forward)
    app.add("GET", "/x/eventsother", exact)

    async def main() -> list[int]:
        codes = []
        for method, path in (
            ("GET", "/x/events"),
            ("PATCH", "/x/events/a/b/"),
            ("GET", "/x/eventsother"),
        ):
            r = await app(Request(method, path, "", {}, b""))
            codes.append(r.status)
        return codes

    assert asyncio.run(main()) == [200, 200, 204]
    assert seen == ["GET /x/events", "PATCH /x/events/a/b/"]
