"""An accept-time event's categories and custom args as the ingest parses them in Python
(activity/pg_accept.accept_fields) are exactly what PostgreSQL's jsonb functions give
for the same JSON (pg_schema.categories_of / unique_args_of, which the search over events
applied): random JSON documents with numbers written every way JSON allows, strings with
escapes and any character, nested values, repeated keys, reserved keys. Where PostgreSQL
refuses the document (a NUL, a number beyond numeric's range) the Python side must not
fail."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postline.activity.pg_accept import accept_fields
from postline.activity.pg_schema import categories_of, unique_args_of
from postline.activity.pg_store import open_pool
from postline.testing.postgres import admin_dsn, fresh_database

pytestmark = pytest.mark.timeout(120)

# $1 is text (a jsonb parameter would go through the pool's codec: json.dumps of the text)
SQL = f"SELECT {categories_of('$1::text::jsonb')}, {unique_args_of('$1::text::jsonb')}"


@dataclass(frozen=True)
class Num:
    text: str  # a JSON number as written


@dataclass(frozen=True)
class Obj:
    pairs: tuple[tuple[str, Any], ...]  # keys may repeat


def _number(negative: bool, whole: int, frac: str | None, exp: tuple[str, str, int] | None) -> Num:
    text = ("-" if negative else "") + str(whole) + (f".{frac}" if frac else "")
    if exp is not None:
        text += f"{exp[0]}{exp[1]}{exp[2]}"
    return Num(text)


numbers = st.builds(
    _number,
    st.booleans(),
    st.one_of(st.integers(0, 9), st.integers(0, 10**30)),
    st.one_of(st.none(), st.text("0123456789", min_size=1, max_size=5)),
    st.one_of(
        st.none(),
        st.tuples(
            st.sampled_from("eE"),
            st.sampled_from(["", "+", "-"]),
            st.one_of(
                st.integers(0, 30),
                st.integers(990, 1010),
                st.integers(16370, 16390),  # numeric's largest scale
                st.integers(131060, 131080),  # and weight
            ),
        ),
    ),
)
strings = st.one_of(st.text(max_size=6), st.sampled_from(["", 'a"b', "c\\d", "é", "\t\x01\x7f"]))
keys = st.one_of(st.sampled_from(["k", "K", "kk", "é", "a b", "category", "status", "url"]),
                 strings)  # fmt: skip
values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, strings),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(st.tuples(keys, inner), max_size=3).map(lambda p: Obj(tuple(p))),
    ),
    max_leaves=8,
)


def dump(value: Any, ascii_only: bool) -> str:
    if isinstance(value, Num):
        return value.text
    if isinstance(value, Obj):
        items = (f"{dump(k, ascii_only)}: {dump(v, ascii_only)}" for k, v in value.pairs)
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v, ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


documents = st.one_of(
    st.builds(
        lambda category, args, reserved: Obj(
            (("email", "a@x.test"), ("event", "processed"), *reserved, *args)
            + ((("category", category),) if category is not None else ())
        ),
        st.one_of(st.none(), values, st.lists(strings, max_size=3)),
        st.lists(st.tuples(keys, values), max_size=4),
        st.lists(st.tuples(st.sampled_from(["timestamp", "status", "tls"]), values), max_size=2),
    ),
    values,  # not always an object
)


class Db:
    def __init__(self, dsn: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.pool: Any = self.loop.run_until_complete(open_pool(dsn, 1))

    def jsonb_fields(self, text: str) -> tuple[list[str | None], dict[str, str]] | None:
        """PostgreSQL's categories and custom args of ``text``; None if it refuses it."""
        try:
            row = self.loop.run_until_complete(self.pool.fetchrow(SQL, text))
        except asyncpg.PostgresError:
            return None
        return list(row[0]), row[1]

    def close(self) -> None:
        self.loop.run_until_complete(self.pool.close())
        self.loop.close()


@pytest.fixture(scope="module")
def db() -> Iterator[Db]:
    with fresh_database(admin_dsn(os.environ)) as dsn:
        db = Db(dsn)
        try:
            yield db
        finally:
            db.close()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=documents, ascii_only=st.booleans())
def test_accept_fields_are_what_jsonb_gives(db: Db, doc: Any, ascii_only: bool) -> None:
    text = dump(doc, ascii_only)
    categories, args = accept_fields(text.encode())
    want = db.jsonb_fields(text)
    if want is not None:
        assert (categories, json.loads(args)) == want, text
