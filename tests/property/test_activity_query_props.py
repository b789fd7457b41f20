"""Properties of the activity query language (activity/query.py) under random input.

Well-formed queries are generated from the grammar as trees of this file's own (rendered with
random case, quotes, escapes, whitespace and redundant parentheses); each compiles, runs in a
real DuckDB, and selects exactly the rows a pure-Python evaluator of the same tree selects.
Random text never raises anything but QueryError, and whatever compiles also executes."""

# ruff: noqa: E501  (strategies read best one per line)

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from postline.activity.query import QueryError
from postline.activity.query_sql import compile_query

pytestmark = pytest.mark.timeout(120)

SCHEMA = """CREATE TABLE messages (
    msg_id VARCHAR, to_email VARCHAR, from_email VARCHAR, subject VARCHAR, status VARCHAR,
    last_event_time TIMESTAMP, categories VARCHAR[], unique_args MAP(VARCHAR, VARCHAR),
    template_id VARCHAR, asm_group_id BIGINT, events VARCHAR[], opens_count INTEGER,
    clicks_count INTEGER, outbound_ip VARCHAR, n INTEGER)"""
COLUMNS = [
    "msg_id", "to_email", "from_email", "subject", "status", "last_event_time", "categories",
    "unique_args", "template_id", "asm_group_id", "events", "opens_count", "clicks_count",
    "outbound_ip",
]  # fmt: skip
Row = dict[str, Any]

# -- small domains, so that terms match often ------------------------------------------------

TEXTS = ["a", "b", "ab", "A", "a%b", "a_b", 'q"', "x'y", "c\\d", "", "é"]
EMAILS = ["a@x.test", "b@x.test", "ab@y.test"]
STATUS_STORED = ["processing", "delivered", "not_delivered"]
STATUS_QUERY = {"processed": {"processing"}, "processing": {"processing"},
                "delivered": {"delivered"}, "not_delivered": {"not_delivered"}}  # fmt: skip
TIMES = [datetime(2026, 1, 1), datetime(2026, 1, 1, 12, 30), datetime(2026, 1, 2, 0, 0, 0, 250000)]
INTS = [0, 1, 2, 7]
TAGS = ["x", "y", "z", "x y"]
TEXT_FIELDS = ["msg_id", "from_email", "subject", "template_id", "outbound_ip"]
INT_FIELDS = ["asm_group_id", "opens_count", "clicks_count"]


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


rows = st.fixed_dictionaries(
    {
        "msg_id": maybe(st.sampled_from(TEXTS)),
        "to_email": maybe(st.sampled_from(EMAILS)),
        "from_email": maybe(st.sampled_from(TEXTS)),
        "subject": maybe(st.sampled_from(TEXTS)),
        "status": maybe(st.sampled_from(STATUS_STORED)),
        "last_event_time": maybe(st.sampled_from(TIMES)),
        "categories": maybe(st.lists(st.sampled_from(TAGS), max_size=3)),
        "unique_args": maybe(st.dictionaries(st.sampled_from(TAGS), st.sampled_from(TEXTS), max_size=3)),
        "template_id": maybe(st.sampled_from(TEXTS)),
        "asm_group_id": maybe(st.sampled_from(INTS)),
        "events": maybe(st.lists(st.sampled_from(["processed", "delivered", "open"]), max_size=3)),
        "opens_count": maybe(st.sampled_from(INTS)),
        "clicks_count": maybe(st.sampled_from(INTS)),
        "outbound_ip": maybe(st.sampled_from(TEXTS)),
    }
)  # fmt: skip

# -- the generator's own tree ----------------------------------------------------------------


@dataclass(frozen=True)
class Term:
    text: str
    test: Callable[[Row], bool]


@dataclass(frozen=True)
class Op:
    name: str  # "and" | "or" | "not"
    items: tuple[Expr, ...]


Expr = Term | Op
PRECEDENCE = {"or": 1, "and": 2, "not": 3}


def evaluate(expr: Expr, row: Row) -> bool:
    if isinstance(expr, Term):
        return expr.test(row)
    if expr.name == "not":
        return not evaluate(expr.items[0], row)
    results = (evaluate(item, row) for item in expr.items)
    return all(results) if expr.name == "and" else any(results)


@st.composite
def keyword(draw: st.DrawFn, word: str) -> str:
    return "".join(c.upper() if draw(st.booleans()) else c.lower() for c in word)


@st.composite
def space(draw: st.DrawFn) -> str:
    return draw(st.sampled_from([" ", "  ", "\t", "\n", " \r\n "]))


@st.composite
def quoted(draw: st.DrawFn, value: str) -> str:
    quote = draw(st.sampled_from(['"', "'"]))
    body = value.replace("\\", "\\\\").replace(quote, "\\" + quote)
    if draw(st.booleans()):  # escaping the other quote too is allowed
        other = "'" if quote == '"' else '"'
        body = body.replace(other, "\\" + other)
    return quote + body + quote


def like_matches(pattern: str, value: str) -> bool:
    regex, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            regex.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        regex.append(".*" if c == "%" else "." if c == "_" else re.escape(c))
        i += 1
    return re.fullmatch("".join(regex), value, re.DOTALL) is not None


COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq, "!=": operator.ne, "<": operator.lt, ">": operator.gt,
    "<=": operator.le, ">=": operator.ge, "<>": operator.ne,
}  # fmt: skip


def scalar(
    column: str,
    get: Callable[[Row], Any],
    values: st.SearchStrategy[Any],
    render: Any,
    ops: list[str],
) -> st.SearchStrategy[Term]:
    """Terms over one scalar column: comparisons, IN, BETWEEN, IS NULL (and LIKE for text)."""

    @st.composite
    def build(draw: st.DrawFn) -> Term:
        shape = draw(st.sampled_from(ops))
        if shape in COMPARE:
            value = draw(values)
            text = f"{column}{draw(space())}{shape}{draw(space())}{draw(render(value))}"
            compare = COMPARE[shape]
            return Term(text, lambda r: (v := get(r)) is not None and compare(v, value))
        if shape in ("in", "not in"):
            chosen = draw(st.lists(values, min_size=1, max_size=4))
            listed = ", ".join(draw(render(v)) for v in chosen)
            text = f"{column} {draw(keyword(shape))} ({listed})"
            inside = shape == "in"
            return Term(text, lambda r: (v := get(r)) is not None and (v in chosen) == inside)
        if shape in ("between", "not between"):
            low, high = draw(values), draw(values)
            text = f"{column} {draw(keyword(shape))} {draw(render(low))} {draw(keyword('and'))} {draw(render(high))}"
            inside = shape == "between"
            return Term(text, lambda r: (v := get(r)) is not None and (low <= v <= high) == inside)
        if shape in ("like", "not like"):
            pattern = draw(st.text(st.sampled_from("ab%_\\\"'"), max_size=5).filter(well_escaped))
            text = f"{column} {draw(keyword(shape))} {draw(quoted(pattern))}"
            inside = shape == "like"
            return Term(
                text, lambda r: (v := get(r)) is not None and like_matches(pattern, v) == inside
            )
        null = shape == "is null"
        return Term(f"{column} {draw(keyword(shape))}", lambda r: (get(r) is None) == null)

    return build()


def well_escaped(pattern: str) -> bool:
    return re.search(r"(?<!\\)(\\\\)*\\$", pattern) is None


TEXT_OPS = ["=", "!=", "<>", "<", ">", "<=", ">=", "in", "not in", "between", "not between",
            "like", "not like", "is null", "is not null"]  # fmt: skip
ORDER_OPS = [op for op in TEXT_OPS if "like" not in op]


@st.composite
def render_int(draw: st.DrawFn, value: int) -> str:
    return str(value) if draw(st.booleans()) else f'"{value}"'


@st.composite
def render_time(draw: st.DrawFn, value: datetime) -> str:
    offset = timedelta(minutes=draw(st.sampled_from([0, 60, -330, 14 * 60])))
    local = value + offset
    body = local.strftime(draw(st.sampled_from(["%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"])))
    if local.microsecond:
        body += "." + f"{local.microsecond:06d}"[: draw(st.sampled_from([6, 3]))].rstrip("0")
    if offset:
        minutes = int(offset.total_seconds() // 60)
        sign, minutes = ("+" if minutes > 0 else "-"), abs(minutes)
        body += f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"
    else:
        body += draw(st.sampled_from(["Z", "z", ""]))
    prefix = draw(st.sampled_from(["", "TIMESTAMP ", "timestamp "]))
    return prefix + f'"{body}"'


@st.composite
def render_email(draw: st.DrawFn, value: str) -> str:
    return draw(quoted(value.upper() if draw(st.booleans()) else value))


@st.composite
def status_term(draw: st.DrawFn) -> Term:
    shape = draw(st.sampled_from(["=", "!=", "in", "not in"]))
    names = draw(st.lists(st.sampled_from(sorted(STATUS_QUERY)), min_size=1, max_size=3))
    stored = set().union(*(STATUS_QUERY[n] for n in names))
    rendered = [draw(quoted(n.upper() if draw(st.booleans()) else n)) for n in names]
    if shape in ("=", "!="):
        stored, text = STATUS_QUERY[names[0]], f"status {shape} {rendered[0]}"
    else:
        text = f"status {draw(keyword(shape))} ({', '.join(rendered)})"
    inside = shape in ("=", "in")
    return Term(text, lambda r: r["status"] is not None and (r["status"] in stored) == inside)


@st.composite
def list_term(draw: st.DrawFn) -> Term:
    column = draw(st.sampled_from(["categories", "events"]))
    value = draw(st.sampled_from([*TAGS, "processed", "delivered"]))
    form = draw(st.sampled_from(["contains", "=", "!="]))
    if form == "contains":
        text = f"{draw(keyword('contains'))}({column},{draw(space())}{draw(quoted(value))})"
    else:
        text = f"{column} {form} {draw(quoted(value))}"
    present = form != "!="
    return Term(text, lambda r: (value in (r[column] or [])) == present)


@st.composite
def map_term(draw: st.DrawFn) -> Term:
    key = draw(st.sampled_from(TAGS))
    if draw(st.booleans()):
        return Term(
            f"Contains(unique_args, {draw(quoted(key))})", lambda r: key in (r["unique_args"] or {})
        )
    column = f"unique_args[{draw(quoted(key))}]"
    term: Term = draw(
        scalar(
            column,
            lambda r: (r["unique_args"] or {}).get(key),
            st.sampled_from(TEXTS),
            quoted,
            TEXT_OPS,
        )
    )
    return term


def column_getter(name: str) -> Callable[[Row], Any]:
    return lambda r: r[name]


terms = st.one_of(
    *[scalar(c, column_getter(c), st.sampled_from(TEXTS), quoted, TEXT_OPS) for c in TEXT_FIELDS],
    scalar("to_email", column_getter("to_email"), st.sampled_from(EMAILS), render_email, TEXT_OPS),
    *[scalar(c, column_getter(c), st.sampled_from(INTS), render_int, ORDER_OPS) for c in INT_FIELDS],
    scalar("last_event_time", column_getter("last_event_time"), st.sampled_from(TIMES), render_time,
           [op for op in ORDER_OPS if "in" not in op.split()]),
    status_term(),
    list_term(),
    map_term(),
)  # fmt: skip


def extend(children: st.SearchStrategy[Expr]) -> st.SearchStrategy[Expr]:
    pairs = st.tuples(st.sampled_from(["and", "or"]), st.lists(children, min_size=2, max_size=3))
    return st.one_of(
        pairs.map(lambda p: Op(p[0], tuple(p[1]))), children.map(lambda c: Op("not", (c,)))
    )


expressions = st.recursive(terms, extend, max_leaves=8)


@st.composite
def render(draw: st.DrawFn, expr: Expr, parent: int = 0) -> str:
    if isinstance(expr, Term):
        text = expr.text
        mine = 4
    elif expr.name == "not":
        text = f"{draw(keyword('not'))} {draw(render(expr.items[0], 3))}"
        mine = 3
    else:
        mine = PRECEDENCE[expr.name]
        # the left operand may share the precedence level (left-assoc), the others must bind tighter
        parts = [draw(render(expr.items[0], mine))]
        parts += [draw(render(item, mine + 1)) for item in expr.items[1:]]
        text = f"{draw(space())}{draw(keyword(expr.name))}{draw(space())}".join(parts)
    if mine < parent or draw(st.integers(0, 5)) == 0:
        text = f"({draw(space())}{text}{draw(space())})"
    return text


# -- the database ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def db() -> Iterator[duckdb.DuckDBPyConnection]:
    con = duckdb.connect()
    con.execute(SCHEMA)
    yield con
    con.close()


def load(db: duckdb.DuckDBPyConnection, table: list[Row]) -> None:
    db.execute("DELETE FROM messages")
    marks = ", ".join("?" * (len(COLUMNS) + 1))
    for n, row in enumerate(table):
        db.execute(f"INSERT INTO messages VALUES ({marks})", [*(row[c] for c in COLUMNS), n])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), expr=expressions, table=st.lists(rows, min_size=1, max_size=6))
def test_compiled_query_agrees_with_python_evaluator(
    db: duckdb.DuckDBPyConnection, data: st.DataObject, expr: Expr, table: list[Row]
) -> None:
    query = data.draw(render(expr))
    compiled = compile_query(query)
    load(db, table)
    result = db.execute(f"SELECT n FROM messages WHERE {compiled.where}", compiled.params)
    selected = {row[0] for row in result.fetchall()}
    assert selected == {n for n, row in enumerate(table) if evaluate(expr, row)}, query
    if compiled.prefilter is not None:  # the index lookup may only narrow what the query implies
        name, value = compiled.prefilter
        assert all(table[n][name] == value for n in selected), query


# -- garbage ---------------------------------------------------------------------------------

VOCABULARY = [
    "to_email", "msg_id", "subject", "status", "asm_group_id", "last_event_time", "categories",
    "unique_args", "events", "nope", "AND", "OR", "NOT", "IN", "LIKE", "BETWEEN", "IS", "NULL",
    "TIMESTAMP", "Contains", "TRUE", "(", ")", "[", "]", ",", "=", "!=", "<", ">=", "<>", '"x"',
    "'y'", '"', "'", "\\", '"2026-01-01T00:00:00Z"', '"delivered"', "5", "-3", "%", "“", "\x00",
]  # fmt: skip
token_soup = st.lists(st.sampled_from(VOCABULARY), max_size=25).map(" ".join)
garbage = st.one_of(
    token_soup,
    st.text(max_size=60),
    st.text(st.sampled_from("()[],=!<>\"'\\ aANDORtsxy_%0-:T"), max_size=60),
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=garbage)
@example(text='to_email="a" AND')
@example(text="(" * 40)
@example(text="NOT " * 40)
@example(text='"\ud800"')
@example(text='subject="\ud800"')
@example(text="asm_group_id = 99999999999999999999")
@example(text='last_event_time = "9999-12-31T23:59:59-05:00"')
@example(text='last_event_time = "0001-01-01T00:00:00+05:00"')
@example(text='subject LIKE "\\\\"')
def test_garbage_raises_only_query_error_and_compiled_queries_execute(
    db: duckdb.DuckDBPyConnection, text: str
) -> None:
    try:
        compiled = compile_query(text)
    except QueryError as error:
        assert 0 <= error.position <= len(text)
        assert error.message
        return
    assert compiled.where.count("?") == len(compiled.params)
    db.execute(f"SELECT count(*) FROM messages WHERE {compiled.where}", compiled.params).fetchall()


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    moment=st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1)),
)
def test_timestamp_literals_denote_the_instant(data: st.DataObject, moment: datetime) -> None:
    moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)  # exact in 3 digits
    literal = data.draw(render_time(moment))
    assert compile_query(f"last_event_time = {literal}").params == [moment], literal
