"""The Email Activity query language (activity/query.py): each construct selects exactly the
right rows of a real in-memory DuckDB table, and each error names the problem and its place."""

# ruff: noqa: E501  (tables of queries read best one per line)

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from urllib.parse import unquote_plus

import duckdb
import pytest

from postline.activity.query import (
    MAX_DEPTH,
    MAX_IN_VALUES,
    MAX_LENGTH,
    MAX_TERMS,
    QueryError,
)
from postline.activity.query_sql import Compiled, compile_query

SCHEMA = """CREATE TABLE messages (
    msg_id VARCHAR, to_email VARCHAR, from_email VARCHAR, subject VARCHAR, status VARCHAR,
    last_event_time TIMESTAMP, categories VARCHAR[], unique_args MAP(VARCHAR, VARCHAR),
    template_id VARCHAR, asm_group_id BIGINT, events VARCHAR[], opens_count INTEGER,
    clicks_count INTEGER, outbound_ip VARCHAR)"""

INJECTION = "Robert'); DROP TABLE messages;--"
ROWS: list[tuple[object, ...]] = [
    ("m1", "a@x.example", "news@shop.example", "Invoice 42", "delivered",
     datetime(2026, 1, 1, 10, 0), ["billing", "monthly"], {"order": "42", "tier": "gold"},
     "t-1", 7, ["processed", "delivered", "open"], 2, 1, "10.0.0.1"),
    ("m2", "b@y.example", "news@shop.example", "Welcome!", "processing",
     datetime(2026, 1, 2), ["welcome"], {"tier": "silver"},
     None, None, ["processed"], 0, 0, None),
    ("m3", "a@x.example", "Alerts@ops.example", 'He said "hi" 100%', "not_delivered",
     datetime(2026, 1, 3, 0, 0, 0, 500000), [], None,
     "t-2", 8, ["processed", "bounce"], 0, 0, "10.0.0.2"),
    ("m4", "c@z.example", None, None, "delivered",
     None, None, {}, None, 9, None, 5, 3, "10.0.0.1"),
    ("m5", "o'brien@x.example", "x@x.example", INJECTION, "delivered",
     datetime(2025, 12, 31, 23, 59, 59), ["c\\d"], {"k'ey": "v\"al"},
     "t-1", 7, ["processed", "delivered"], 1, 0, "10.0.0.3"),
]  # fmt: skip


@pytest.fixture(scope="module")
def db() -> Iterator[duckdb.DuckDBPyConnection]:
    con = duckdb.connect()
    con.execute(SCHEMA)
    con.executemany(f"INSERT INTO messages VALUES ({', '.join('?' * 14)})", ROWS)
    yield con
    con.close()


def select(db: duckdb.DuckDBPyConnection, query: str) -> set[str]:
    compiled = compile_query(query)
    rows = db.execute(f"SELECT msg_id FROM messages WHERE {compiled.where}", compiled.params)
    return {row[0] for row in rows.fetchall()}


ALL = {"m1", "m2", "m3", "m4", "m5"}

SELECTS = [
    # one field each
    ('msg_id="m2"', {"m2"}),
    ('to_email="a@x.example"', {"m1", "m3"}),
    ('to_email="A@X.Example"', {"m1", "m3"}),  # stored lower-cased: compared lower-cased
    ('from_email="news@shop.example"', {"m1", "m2"}),
    ('from_email="alerts@ops.example"', set()),  # other strings are case-sensitive
    ('subject="Invoice 42"', {"m1"}),
    ('status="delivered"', {"m1", "m4", "m5"}),
    ('status="processed"', {"m2"}),  # SendGrid's spelling of the store's "processing"
    ('status="processing"', {"m2"}),
    ('status="NOT_DELIVERED"', {"m3"}),
    ('status!="delivered"', {"m2", "m3"}),
    ('template_id="t-1"', {"m1", "m5"}),
    ("asm_group_id=7", {"m1", "m5"}),
    ('asm_group_id="8"', {"m3"}),  # SendGrid's examples quote numbers
    ('unsubscribe_group_id="9"', {"m4"}),
    ('outbound_ip="10.0.0.1"', {"m1", "m4"}),
    ('clicks="0"', {"m2", "m3", "m5"}),
    ("opens_count >= 2", {"m1", "m4"}),
    # comparisons; NULL never matches a comparison
    ('subject != "Invoice 42"', {"m2", "m3", "m5"}),
    ('subject <> "Invoice 42"', {"m2", "m3", "m5"}),
    ("asm_group_id < 8", {"m1", "m5"}),
    ("asm_group_id > 7", {"m3", "m4"}),
    ("asm_group_id <= 8", {"m1", "m3", "m5"}),
    ('subject > "S"', {"m2"}),
    ('to_email < "B"', {"m1", "m3"}),
    # IN / BETWEEN / LIKE / IS NULL, and their NOT forms
    ('msg_id IN ("m1", "m4", "zz")', {"m1", "m4"}),
    ('msg_id NOT IN ("m1", "m4")', {"m2", "m3", "m5"}),
    ('status in ("processed", "not_delivered")', {"m2", "m3"}),
    ('status NOT IN ("delivered")', {"m2", "m3"}),
    ("asm_group_id BETWEEN 7 AND 8", {"m1", "m3", "m5"}),
    ("asm_group_id NOT BETWEEN 7 AND 8", {"m4"}),
    ('subject LIKE "%i%"', {"m1", "m3"}),
    ('subject LIKE "w%"', set()),  # case-sensitive
    ('subject NOT LIKE "%i%"', {"m2", "m5"}),
    ('subject LIKE "%100\\\\%"', {"m3"}),  # \\ in the query is \ in the pattern: a literal %
    ('subject LIKE "Invoice __"', {"m1"}),
    ('to_email LIKE "%@X.EXAMPLE"', {"m1", "m3", "m5"}),
    ("subject IS NULL", {"m4"}),
    ("subject is not null", {"m1", "m2", "m3", "m5"}),
    ("template_id IS NULL", {"m2", "m4"}),
    # time
    (
        'last_event_time BETWEEN TIMESTAMP "2026-01-01T00:00:00Z" '
        'AND TIMESTAMP "2026-01-02T00:00:00Z"',
        {"m1", "m2"},
    ),
    ('last_event_time > TIMESTAMP "2026-01-01T12:00:00+02:00"', {"m2", "m3"}),  # 10:00 UTC
    ('last_event_time >= TIMESTAMP "2026-01-01T05:00:00-05:00"', {"m1", "m2", "m3"}),
    ('last_event_time < TIMESTAMP "2026-01-01"', {"m5"}),
    ('last_event_time = "2026-01-03T00:00:00.500Z"', {"m3"}),
    ('last_event_time = TIMESTAMP "2026-01-03 00:00:00.5"', {"m3"}),
    ('last_event_time NOT BETWEEN "2026-01-01" AND "2026-01-02T23:59:59Z"', {"m3", "m5"}),
    ("last_event_time IS NULL", {"m4"}),
    # lists and maps
    ('Contains(categories,"billing")', {"m1"}),
    ('CONTAINS(categories, "c\\\\d")', {"m5"}),
    ('categories="welcome"', {"m2"}),
    ('categories!="welcome"', {"m1", "m3", "m4", "m5"}),
    ('Contains(events,"delivered")', {"m1", "m5"}),
    ('NOT Contains(events,"delivered")', {"m2", "m3", "m4"}),
    ('contains(unique_args,"tier")', {"m1", "m2"}),
    ("(unique_args['order']=\"42\")", {"m1"}),
    ('unique_args["tier"] != "gold"', {"m2"}),
    ('unique_args["tier"] LIKE "%l%"', {"m1", "m2"}),
    ("unique_args['k\\'ey'] = 'v\"al'", {"m5"}),
    ("unique_args['tier'] IS NULL", {"m3", "m4", "m5"}),
    # connectives: NOT binds tighter than AND, AND tighter than OR
    ('msg_id="m1" OR msg_id="m2" AND status="delivered"', {"m1"}),
    ('(msg_id="m1" OR msg_id="m2") AND status="processed"', {"m2"}),
    ('NOT msg_id="m1" AND to_email="a@x.example"', {"m3"}),
    ('NOT (msg_id="m1" AND to_email="a@x.example")', ALL - {"m1"}),
    ('NOT NOT msg_id="m4"', {"m4"}),
    ('NOT subject="Invoice 42"', ALL - {"m1"}),  # NOT is the exact complement: m4 included
    ('msg_id="m1" or msg_id="m2" or msg_id="m3" and not msg_id="m3"', {"m1", "m2"}),
    ('((((msg_id="m5"))))', {"m5"}),
    # case, quotes, escapes, whitespace
    ('TO_EMAIL="a@x.example" aNd NoT StAtUs="delivered"', {"m3"}),
    ("subject='Welcome!'", {"m2"}),
    ('subject="He said \\"hi\\" 100%"', {"m3"}),
    ("subject='He said \"hi\" 100%'", {"m3"}),
    ("to_email='o\\'brien@x.example'", {"m5"}),
    ('\n\tmsg_id\n=\n"m1"\t', {"m1"}),
    ("", ALL),
    ("   ", ALL),
]


@pytest.mark.parametrize(("query", "expected"), SELECTS)
def test_query_selects_exactly(
    db: duckdb.DuckDBPyConnection, query: str, expected: set[str]
) -> None:
    assert select(db, query) == expected


def test_url_encoded_examples_from_sendgrid_docs(db: duckdb.DuckDBPyConnection) -> None:
    # The form clients send, decoded as the API layer will decode it.
    encoded = (
        "status%3D%22not_delivered%22%20AND%20last_event_time%20BETWEEN%20TIMESTAMP%20"
        "%222026-01-02T00%3A00%3A00Z%22%20AND%20TIMESTAMP%20%222026-01-03T23%3A59%3A59Z%22"
    )
    assert select(db, unquote_plus(encoded)) == {"m3"}
    assert select(db, unquote_plus("to_email%3D%22a%40x.example%22")) == {"m1", "m3"}
    assert select(db, unquote_plus("subject%3D%22Welcome!%22+OR+msg_id%3D%22m4%22")) == {
        "m2",
        "m4",
    }


@pytest.mark.parametrize(
    "literal",
    [INJECTION, "x' OR 1=1 --", 'x" OR 1=1 --', "'; DROP TABLE messages; --", "?", "%s"],
)
def test_literals_stay_parameters(db: duckdb.DuckDBPyConnection, literal: str) -> None:
    escaped = literal.replace("\\", "\\\\").replace('"', '\\"')
    compiled = compile_query(f'subject="{escaped}" OR Contains(categories, "{escaped}")')
    assert compiled.params == [literal, literal]
    assert literal == "?" or literal not in compiled.where
    assert compiled.where.count("?") == 2
    expected = {"m5"} if literal == INJECTION else set()
    assert select(db, f'subject="{escaped}"') == expected
    assert db.execute("SELECT count(*) FROM messages").fetchone() == (5,)


def test_where_text_holds_no_literal() -> None:
    compiled = compile_query(
        'unique_args[\'secret_key\']="secret_value" AND subject LIKE "%secret_like%" '
        'AND asm_group_id IN (424242, 434343) AND last_event_time > "2026-01-01"'
    )
    for word in ("secret_key", "secret_value", "secret_like", "424242", "434343", "2026"):
        assert word not in compiled.where
    assert compiled.params[:3] == ["secret_key", "secret_value", "%secret_like%"]
    assert compiled.params[3:5] == [424242, 434343]
    assert compiled.params[5] == datetime(2026, 1, 1)


@pytest.mark.parametrize(
    ("query", "prefilter"),
    [
        ('msg_id="m1"', ("msg_id", "m1")),
        ('to_email="A@X.example"', ("to_email", "a@x.example")),
        ('to_email="a@x.example" AND msg_id="m1"', ("msg_id", "m1")),
        ('status="delivered" AND (subject="s" AND To_Email="B@y.example")', ("to_email", "b@y.example")),
        ('msg_id="m1" OR msg_id="m2"', None),
        ('NOT msg_id="m1"', None),
        ('NOT (msg_id="m1" AND status="delivered")', None),
        ('msg_id!="m1"', None),
        ('msg_id IN ("m1")', None),
        ('msg_id LIKE "m1"', None),
        ('(msg_id="m1" OR status="delivered") AND to_email="a@x.example"', ("to_email", "a@x.example")),
        ('status="delivered"', None),
        ("", None),
    ],
)  # fmt: skip
def test_prefilter(query: str, prefilter: tuple[str, str] | None) -> None:
    assert compile_query(query).prefilter == prefilter


def test_empty_query_matches_everything() -> None:
    assert compile_query("") == Compiled("true", [], None)


# -- errors ----------------------------------------------------------------------------------

ERRORS = [
    ('bad_field="x"', "invalid syntax: 'bad_field' is not a known field", 0),
    ('to_email="a" AND nope="x"', "'nope' is not a known field", 17),
    ('teammate="me"', "'teammate' is a SendGrid field Postline does not store", 0),
    ('subject="abc', "unterminated string: no closing \"", 8),
    ("subject='abc\\'", "unterminated string: no closing '", 8),
    ('subject="a\\q"', "invalid escape \\q", 10),
    ("to_email=", "missing operand: expected a value after =", 9),
    ('to_email="a" AND', "missing operand after AND: expected a term", 16),
    ('to_email="a" OR ()', "missing operand after (: expected a term", 17),
    ("NOT", "missing operand after NOT", 3),
    ('AND to_email="a"', "expected a field name, got 'AND'", 0),
    ('(to_email="a"', "unbalanced parenthesis: '(' is never closed", 0),
    ('((to_email="a")', "unbalanced parenthesis: '(' is never closed", 0),
    ('to_email="a")', "unbalanced parenthesis: ')' without '('", 12),
    ('msg_id IN ("a", "b"', "unbalanced parenthesis: '(' is never closed", 10),
    ('(to_email="a" subject="b")', "expected ')' or AND / OR, got 'subject'", 14),
    ('to_email="a" "b"', 'expected AND, OR or end of query, got "b"', 13),
    ('last_event_time > TIMESTAMP "2026-13-01T00:00:00Z"', "bad timestamp '2026-13-01", 28),
    ('last_event_time > "yesterday"', "bad timestamp 'yesterday'", 18),
    ('last_event_time > "2026-01-01T00:00:00+25:00"', "bad timestamp", 18),
    ('last_event_time BETWEEN TIMESTAMP "2026-01-01" AND TIMESTAMP "2026-02-30"', "bad timestamp", 61),
    ('last_event_time BETWEEN TIMESTAMP "2026-01-01" OR x', "expected AND in BETWEEN, got 'OR'", 47),
    ("last_event_time > TIMESTAMP 5", "expected a quoted time after TIMESTAMP, got '5'", 28),
    ("last_event_time = 5", "wrong type: last_event_time is a timestamp", 18),
    ('asm_group_id = "x"', 'wrong type: asm_group_id is an integer, got "x"', 15),
    ("asm_group_id IN (1, 'two')", "wrong type: asm_group_id is an integer, got 'two'", 20),
    ("subject = 5", "wrong type: subject is a string, got '5'", 10),
    ('subject = TIMESTAMP "2026-01-01"', "wrong type: subject is a string", 20),
    ("asm_group_id = 9223372036854775808", "integer out of range", 15),
    ('status < "delivered"', "< does not apply to status", 7),
    ('status LIKE "d%"', "LIKE does not apply to status", 7),
    ('last_event_time LIKE "2026%"', "LIKE does not apply to last_event_time", 16),
    ('status = "bounced"', "unknown status 'bounced': one of processed", 9),
    ('categories LIKE "x"', 'categories is a list: use Contains(categories, "value")', 11),
    ('unique_args = "x"', "unique_args is a map: use unique_args['key']", 12),
    ('Contains(subject, "Invoice")', "CONTAINS expects an array or map type as the first argument", 9),
    ("Contains(categories, 5)", "expected a quoted value after ',', got '5'", 21),
    ('Contains(categories "x")', "expected ',' after the Contains field, got \"x\"", 20),
    ('Contains(categories, "x"', "expected ')' to close Contains(, got end of query", 24),
    ('subject["k"]="x"', "only unique_args takes a ['key'], not subject", 7),
    ("unique_args[k]='x'", "expected a quoted key in unique_args[...], got 'k'", 12),
    ('msg_id=\u201cabc\u201d', "typographic quote", 7),
    ('to_email ~ "a"', "unexpected character '~'", 9),
    ('subject NOT = "a"', "expected BETWEEN, IN or LIKE after NOT, got '='", 12),
    ("subject IS NOT 5", "expected NULL after IS, got '5'", 15),
    ('subject "a"', "expected an operator after subject, got \"a\"", 8),
    ('subject LIKE "a\\\\"', "LIKE pattern ends with the escape character", 13),
    ("subject = \"\ud800\"", "lone surrogate", 11),
]  # fmt: skip


@pytest.mark.parametrize(("query", "message", "position"), ERRORS)
def test_error_names_problem_and_position(query: str, message: str, position: int) -> None:
    with pytest.raises(QueryError) as caught:
        compile_query(query)
    assert message in caught.value.message
    assert caught.value.position == position


def test_unknown_field_lists_known_fields() -> None:
    with pytest.raises(QueryError) as caught:
        compile_query('bogus="x"')
    for name in (
        "to_email",
        "from_email",
        "subject",
        "msg_id",
        "status",
        "last_event_time",
        "categories",
        "unique_args",
        "template_id",
        "asm_group_id",
        "events",
    ):
        assert name in caught.value.message  # fmt: skip


def test_like_pattern_with_escaped_backslash_is_fine(db: duckdb.DuckDBPyConnection) -> None:
    assert select(db, 'subject LIKE "a\\\\\\\\"') == set()  # pattern a\\: a literal backslash


# -- bounds ----------------------------------------------------------------------------------


def term(i: int) -> str:
    return f'msg_id="m{i}"'


def test_length_bound() -> None:
    padded = 'msg_id="m1"'.ljust(MAX_LENGTH)
    assert compile_query(padded).params == ["m1"]
    with pytest.raises(QueryError) as caught:
        compile_query(padded + " ")
    assert caught.value.position == MAX_LENGTH
    assert f"at most {MAX_LENGTH}" in caught.value.message


def test_depth_bound_parentheses(db: duckdb.DuckDBPyConnection) -> None:
    deep = "(" * MAX_DEPTH + term(1) + ")" * MAX_DEPTH
    assert select(db, deep) == {"m1"}
    with pytest.raises(QueryError) as caught:
        compile_query("(" + deep + ")")
    assert caught.value.position == MAX_DEPTH
    assert "nesting too deep" in caught.value.message


def test_depth_bound_not(db: duckdb.DuckDBPyConnection) -> None:
    deep = "NOT " * MAX_DEPTH + term(1)  # an even count: the term itself
    assert select(db, deep) == {"m1"}
    with pytest.raises(QueryError) as caught:
        compile_query("NOT (" + deep + ")")
    assert caught.value.position == len("NOT (") + len("NOT ") * (MAX_DEPTH - 2)  # level 33
    assert "nesting too deep" in caught.value.message


def test_terms_bound(db: duckdb.DuckDBPyConnection) -> None:
    many = " OR ".join(term(i) for i in range(MAX_TERMS))
    assert select(db, many) == {"m1", "m2", "m3", "m4", "m5"}
    with pytest.raises(QueryError) as caught:
        compile_query(many + " OR Contains(events, 'x')")
    assert caught.value.position == len(many) + 4
    assert f"too many terms: at most {MAX_TERMS}" in caught.value.message


def test_in_values_bound(db: duckdb.DuckDBPyConnection) -> None:
    values = ", ".join(f'"m{i}"' for i in range(MAX_IN_VALUES))
    assert select(db, f"msg_id IN ({values})") == ALL
    query = f'msg_id IN ({values}, "m1")'
    with pytest.raises(QueryError) as caught:
        compile_query(query)
    assert caught.value.position == len(query) - 5
    assert f"at most {MAX_IN_VALUES}" in caught.value.message
