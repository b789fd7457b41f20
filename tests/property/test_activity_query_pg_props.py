"""The query language compiled for PostgreSQL (activity/query_sql.py) under random queries:
the generator and the pure-Python evaluator of test_activity_query_props.py, the rows in a
real PostgreSQL table typed as pg_schema.message_relation's columns (text COLLATE "C",
text[], jsonb of strings, timestamp, bigint / integer). Each query selects exactly the
rows the evaluator selects, as the DuckDB form does."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.property.test_activity_query_props import (
    COLUMNS,
    Expr,
    Row,
    evaluate,
    expressions,
    render,
    rows,
)

from postline.activity.pg_store import open_pool
from postline.activity.query_sql import compile_pg, numbered
from postline.testing.postgres import admin_dsn, fresh_database

pytestmark = pytest.mark.timeout(120)

SCHEMA = """CREATE TABLE messages (
    msg_id text COLLATE "C", to_email text COLLATE "C", from_email text COLLATE "C",
    subject text COLLATE "C", status text, last_event_time timestamp, categories text[],
    unique_args jsonb, template_id text COLLATE "C", asm_group_id bigint, events text[],
    opens_count integer, clicks_count integer, outbound_ip text COLLATE "C", n integer)"""


class Db:
    def __init__(self, dsn: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.pool: Any = self.loop.run_until_complete(open_pool(dsn, 1))
        self.run(self.pool.execute(SCHEMA))

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.run(self.pool.close())
        self.loop.close()


@pytest.fixture(scope="module")
def db() -> Iterator[Db]:
    with fresh_database(admin_dsn(os.environ)) as dsn:
        db = Db(dsn)
        try:
            yield db
        finally:
            db.close()


async def select(db: Db, table: list[Row], where: str, params: list[object]) -> set[int]:
    async with db.pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM messages")
        await conn.executemany(
            f"INSERT INTO messages VALUES ({', '.join(f'${i}' for i in range(1, 16))})",
            [[*(row[c] for c in COLUMNS), n] for n, row in enumerate(table)],
        )
        found = await conn.fetch(numbered(f"SELECT n FROM messages WHERE {where}"), *params)
    return {r[0] for r in found}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), expr=expressions, table=st.lists(rows, min_size=1, max_size=6))
def test_pg_compiled_query_agrees_with_python_evaluator(
    db: Db, data: st.DataObject, expr: Expr, table: list[Row]
) -> None:
    query = data.draw(render(expr))
    compiled = compile_pg(query)
    selected = db.run(select(db, table, compiled.where, compiled.params))
    assert selected == {n for n, row in enumerate(table) if evaluate(expr, row)}, query
    if compiled.prefilter is not None:
        name, value = compiled.prefilter
        assert all(table[n][name] == value for n in selected), query
