"""Suppression lists and unsubscribe groups: the SQLite spool's behaviours, run against the
embedded store and the PostgreSQL one (cluster mode) alike, plus what only the shared store
has (two nodes, concurrent group writes). A fresh PostgreSQL database per test."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeAlias

import pytest

from postline.backends.postgres.suppressions import PostgresSuppressions
from postline.backends.sqlite.asm import Group, GroupChange
from postline.backends.sqlite.spool import open_sqlite_spool
from postline.config import SpoolConfig
from postline.spool.interface import Suppression, UnknownGroups
from postline.testing.postgres import admin_dsn, fresh_database

T0 = 1_700_000_000.0
Opener: TypeAlias = Callable[[], Any]  # an async context manager yielding a store


@pytest.fixture(scope="module")
def pg_dsn() -> Iterator[str]:
    with fresh_database(admin_dsn(os.environ)) as url:
        yield url


_tenants = iter(range(10**6))


@pytest.fixture
def tenant() -> str:
    """A tenant no other test used (the PostgreSQL database is shared by the module)."""
    return f"t{next(_tenants)}"


@pytest.fixture(params=["sqlite", "postgres"])
def opener(request: pytest.FixtureRequest, tmp_path: Path, pg_dsn: str) -> Opener:
    @asynccontextmanager
    async def sqlite() -> AsyncIterator[Any]:
        spool = await open_sqlite_spool(str(tmp_path / "data"), SpoolConfig(min_free_bytes=0))
        try:
            yield spool
        finally:
            await spool.close()

    @asynccontextmanager
    async def postgres() -> AsyncIterator[Any]:
        store = await PostgresSuppressions.open(pg_dsn)
        try:
            yield store
        finally:
            await store.close()

    return sqlite if request.param == "sqlite" else postgres


def run(opener: Opener, check: Callable[[Any], Awaitable[None]]) -> None:
    async def main() -> None:
        async with opener() as store:
            await check(store)

    asyncio.run(main())


async def record(store: Any, sups: list[Suppression]) -> None:
    if isinstance(store, PostgresSuppressions):
        await store.add(sups)
    else:
        await store.record([], sups)


# -- the lists ------------------------------------------------------------------------------


def test_lookup_gives_the_drop_reason_of_listed_addresses(opener: Opener, tenant: str) -> None:
    async def check(s: Any) -> None:
        await s.add_suppression(tenant, "bounces", "Bob@X.example", reason="550", created=T0)
        await s.add_suppression(tenant, "blocks", "carol@x.example", created=T0)  # still sent
        await s.add_suppression(tenant, "unsubscribes", "dave@x.example", created=T0)
        await s.add_suppression(tenant, "spam_reports", "dave@x.example", created=T0)
        await s.add_suppression(tenant, "invalid_emails", "eve@bücher.example", created=T0)
        got = await s.suppressed(
            tenant,
            ["BOB@x.example", "carol@x.example", "dave@X.example", "eve@xn--bcher-kva.example"],
        )
        assert got == {
            "bob@x.example": "Bounced Address",
            "dave@x.example": "Spam Reporting Address",  # the first list, in DROP_REASONS order
            "eve@xn--bcher-kva.example": "Invalid",
        }
        assert await s.suppressed(tenant + "x", ["bob@x.example"]) == {}, "another tenant"
        assert await s.suppressed(tenant, []) == {}

    run(opener, check)


def test_an_upsert_replaces_reason_status_and_created(opener: Opener, tenant: str) -> None:
    async def check(s: Any) -> None:
        await s.add_suppression(tenant, "bounces", "a@x.example", reason="one", created=T0)
        await record(s, [Suppression(tenant, "bounces", "A@x.example", "two", "5.1.1", T0 + 5)])
        assert await s.suppression(tenant, "bounces", "a@X.example") == (
            "a@x.example",
            T0 + 5,
            "two",
            "5.1.1",
        )
        assert await s.suppression(tenant, "blocks", "a@x.example") is None
        assert await s.suppression(tenant + "x", "bounces", "a@x.example") is None

    run(opener, check)


def test_a_page_is_newest_first_windowed_filtered_and_tenant_scoped(
    opener: Opener, tenant: str
) -> None:
    async def check(s: Any) -> None:
        sups = [Suppression(tenant, "bounces", f"u{i}@x.example", "r", "s", T0 + i)
                for i in range(6)]  # fmt: skip
        sups.append(Suppression(tenant, "bounces", "other@y.example", "r", "s", T0 + 10))
        sups.append(Suppression(tenant + "x", "bounces", "u9@x.example", "r", "s", T0))
        await record(s, sups)
        page = await s.suppression_page(tenant, "bounces", (T0 + 1, T0 + 5), "%@x.example", (2, 1))
        assert [r[0] for r in page] == ["u3@x.example", "u2@x.example"]
        assert [r[0] for r in await s.suppression_page(
            tenant, "bounces", (0, 2e9), "u\\_%", (10, 0))] == []  # fmt: skip
        every = await s.suppression_page(tenant, "bounces", (0, 2e9), "%", (100, 0))
        assert len(every) == 7 and every[0] == ("other@y.example", T0 + 10, "r", "s")
        assert await s.suppression_page(tenant, "blocks", (0, 2e9), "%", (100, 0)) == []

    run(opener, check)


def test_remove_some_or_all_counts_what_was_listed(opener: Opener, tenant: str) -> None:
    async def check(s: Any) -> None:
        for e in ("a@x.example", "b@x.example", "c@x.example"):
            await s.add_suppression(tenant, "bounces", e, created=T0)
        await s.add_suppression(tenant, "blocks", "a@x.example", created=T0)
        await s.add_suppression(tenant + "x", "bounces", "a@x.example", created=T0)
        assert await s.remove_suppressions(tenant, "bounces", ["A@x.example", "z@x.example"]) == 1
        assert await s.remove_suppressions(tenant, "bounces", None) == 2
        assert await s.suppression(tenant, "blocks", "a@x.example") is not None, "other list"
        got = await s.suppressed(tenant + "x", ["a@x.example"])
        assert got == {"a@x.example": "Bounced Address"}, "other tenant kept"

    run(opener, check)


# -- unsubscribe groups -----------------------------------------------------------------------


def test_group_members_drop_and_unknown_groups_refuse(opener: Opener, tenant: str) -> None:
    async def check(s: Any) -> None:
        news = await s.asm.create(tenant, GroupChange("news", "d"), 10)
        ads = await s.asm.create(tenant, GroupChange("ads", ""), 10)
        theirs = await s.asm.create(tenant + "x", GroupChange("news", ""), 10)
        assert await s.asm.add_members(tenant, news.id, ["A@x.example", "b@x.example"], T0)
        await s.add_suppression(tenant, "bounces", "b@x.example", created=T0)
        emails = ["a@x.example", "b@x.example", "c@x.example"]
        got = await s.suppressed(tenant, emails, (news.id, ads.id))
        assert got == {"a@x.example": "Unsubscribed Address", "b@x.example": "Bounced Address"}
        assert await s.suppressed(tenant, emails, (ads.id,)) == {"b@x.example": "Bounced Address"}
        with pytest.raises(UnknownGroups) as caught:
            await s.suppressed(tenant, emails, (news.id, theirs.id, 999_999))
        assert caught.value.group_ids == (theirs.id, 999_999)
        with pytest.raises(UnknownGroups):
            await s.suppressed(tenant, [], (theirs.id,))

    run(opener, check)


def test_groups_limit_names_default_update_delete(opener: Opener, tenant: str) -> None:
    async def check(s: Any) -> None:
        a = await s.asm.create(tenant, GroupChange("a", "", True), 2)
        assert (a.name, a.is_default) == ("a", True)
        assert "already exists" in await s.asm.create(tenant, GroupChange("a", ""), 2)
        b = await s.asm.create(tenant, GroupChange("b", "", True), 2)
        assert "at most 2" in await s.asm.create(tenant, GroupChange("c", ""), 2)
        assert [(g.name, g.is_default) for g in await s.asm.groups(tenant)] == [
            ("a", False), ("b", True)
        ]  # fmt: skip
        assert "already exists" in await s.asm.update(tenant, a.id, GroupChange(name="b"))
        a2 = await s.asm.update(tenant, a.id, GroupChange(description="new", is_default=True))
        assert (a2.description, a2.is_default) == ("new", True)
        assert [g.is_default for g in await s.asm.groups(tenant, [b.id])] == [False]
        assert await s.asm.update(tenant + "x", a.id, GroupChange(name="z")) is None
        assert await s.asm.delete(tenant + "x", a.id) is False, "another tenant's group"
        assert await s.asm.delete(tenant, a.id) is True
        assert [g.id for g in await s.asm.groups(tenant)] == [b.id]

    run(opener, check)


def test_members_listed_searched_and_removed(opener: Opener, tenant: str) -> None:
    async def check(s: Any) -> None:
        g = await s.asm.create(tenant, GroupChange("g", ""), 10)
        h = await s.asm.create(tenant, GroupChange("h", ""), 10)
        assert await s.asm.add_members(tenant, g.id, ["c@x.example", "B@x.example"], T0)
        assert await s.asm.add_members(tenant, g.id, ["b@x.example"], T0 + 1), "idempotent"
        assert await s.asm.add_members(tenant, h.id, ["b@x.example"], T0)
        assert not await s.asm.add_members(tenant + "x", g.id, ["z@x.example"], T0)
        assert await s.asm.members(tenant, g.id, (10, 0)) == ["b@x.example", "c@x.example"]
        assert await s.asm.members(tenant, g.id, (1, 1)) == ["c@x.example"]
        assert await s.asm.members(tenant + "x", g.id, (10, 0)) is None
        assert await s.asm.search(tenant, g.id, ["C@x.example", "q@x.example"]) == ["c@x.example"]
        assert [(r[0], r[1], r[2]) for r in await s.asm.all_members(tenant, (10, 0))] == [
            ("b@x.example", g.id, "g"), ("c@x.example", g.id, "g"), ("b@x.example", h.id, "h")
        ]  # fmt: skip
        assert (await s.asm.groups(tenant, [g.id]))[0].unsubscribes == 2
        assert [(x.id, y) for x, y in await s.asm.email_groups(tenant, "C@x.example")] == [
            (g.id, True), (h.id, False)
        ]  # fmt: skip
        assert await s.asm.remove_member(tenant, g.id, "C@X.example")
        assert await s.asm.members(tenant, g.id, (10, 0)) == ["b@x.example"]
        assert await s.asm.all_members(tenant + "x", (10, 0)) == []

    run(opener, check)


# -- only the shared store -------------------------------------------------------------------


def test_a_suppression_added_on_one_node_drops_on_another(pg_dsn: str, tenant: str) -> None:
    async def main() -> None:
        a, b = await PostgresSuppressions.open(pg_dsn), await PostgresSuppressions.open(pg_dsn)
        try:
            await a.add_suppression(tenant, "bounces", "x@x.example")
            g = await a.asm.create(tenant, GroupChange("g", ""), 10)
            assert isinstance(g, Group)
            await a.asm.add_members(tenant, g.id, ["y@x.example"], T0)
            got = await b.suppressed(tenant, ["x@x.example", "y@x.example"], (g.id,))
            assert got == {"x@x.example": "Bounced Address", "y@x.example": "Unsubscribed Address"}
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_nodes_creating_groups_at_once_keep_the_limit_and_one_default(
    pg_dsn: str, tenant: str
) -> None:
    """Count-then-insert under the tenant's advisory lock: without it, 8 concurrent creates
    against a limit of 3 all find fewer than 3 groups and insert."""

    async def main() -> None:
        stores = [await PostgresSuppressions.open(pg_dsn, migrate=False) for _ in range(4)]
        try:
            made = await asyncio.gather(*(
                stores[i % 4].asm.create(tenant, GroupChange(f"g{i}", "", True), 3)
                for i in range(8)
            ))  # fmt: skip
            assert sum(1 for m in made if not isinstance(m, str)) == 3
            groups = await stores[0].asm.groups(tenant)
            assert len(groups) == 3 and sum(g.is_default for g in groups) == 1
        finally:
            for s in stores:
                await s.close()

    asyncio.run(main())


def test_the_lookup_is_one_query_whatever_the_recipients(pg_dsn: str, tenant: str) -> None:
    async def main() -> None:
        store = await PostgresSuppressions.open(pg_dsn, size=1)  # one connection: we watch it
        queries: list[str] = []
        try:
            g = await store.asm.create(tenant, GroupChange("g", ""), 10)
            assert isinstance(g, Group)
            await store.add_suppression(tenant, "bounces", "r7@x.example")
            emails = [f"r{i}@x.example" for i in range(1000)]
            await store.suppressed(tenant, emails[:1], (g.id,))  # asyncpg learns the types once
            async with store._pool.acquire() as conn:
                conn.add_query_logger(lambda q: queries.append(q.query))
            got = await store.suppressed(tenant, emails, (g.id,))
            assert got == {"r7@x.example": "Bounced Address"}
            assert len(queries) == 1, queries  # the lookup; no reset on release either
        finally:
            await store.close()

    asyncio.run(main())
