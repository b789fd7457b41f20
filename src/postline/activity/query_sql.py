"""The Email Activity query language (query.py's syntax tree) compiled to a SQL boolean.

Two dialects, one compiler: DuckDB for the embedded store (schema.py's message relation)
and PostgreSQL for cluster mode's (pg_schema.message_relation). Both keep the same rules:
every literal is a ``?`` parameter (PostgreSQL's numbered ``$n`` by :func:`numbered`),
every term is two-valued (``coalesce(..., false)``, or ``(... AND column IS NOT NULL)``
on a plain column: a message whose field is NULL never matches a comparison, and
``NOT term`` is exactly its complement), and the same
``prefilter`` (an equality on ``msg_id`` or ``to_email`` among the top-level conjuncts,
pushed into the scan so an index serves it).

What the PostgreSQL dialect changes, over pg_schema.message_relation's columns:

* ``Contains(categories|events, "x")`` is ``"x" = ANY(column)`` (``text[]``);
* ``unique_args`` is ``jsonb``: ``unique_args['k']`` is ``unique_args ->> 'k'`` (compared
  ``COLLATE "C"``, byte order, as DuckDB and the table's text columns compare) and
  ``Contains(unique_args, "k")`` is ``jsonb_exists`` (the ``?`` operator would read as a
  placeholder);
* every parameter carries its type (``?::text``, ``?::bigint``, ``?::timestamp``):
  PostgreSQL infers a parameter's type from its first use, and an integer beyond
  ``integer`` range compared with ``opens_count`` must still be a valid ``bigint``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from postline.activity.query import parse
from postline.activity.query_ast import STATUSES, And, Kind, Node, Not, Or, Term


@dataclass(frozen=True)
class Compiled:
    where: str
    params: list[object]
    prefilter: tuple[str, str] | None


@dataclass(frozen=True)
class SqlDialect:
    keyed: str  # the column for unique_args['key'], with one ``?`` for the key
    contains: Callable[[Kind, str], str]  # Contains(column, ?) for a LIST or MAP column
    mark: Callable[[Kind], str]  # the placeholder of a value of this kind


def _duckdb_contains(kind: Kind, column: str) -> str:
    function = "map_contains" if kind is Kind.MAP else "list_contains"
    return f"{function}({column}, ?)"


def _pg_contains(kind: Kind, column: str) -> str:
    if kind is Kind.MAP:
        return f"jsonb_exists({column}, ?::text)"
    return f"?::text = ANY({column})"


_PG_TYPES = {Kind.INT: "bigint", Kind.TIME: "timestamp"}

DUCKDB = SqlDialect("unique_args[?]", _duckdb_contains, lambda kind: "?")
POSTGRES = SqlDialect(
    '((unique_args ->> ?::text) COLLATE "C")',
    _pg_contains,
    lambda kind: f"?::{_PG_TYPES.get(kind, 'text')}",
)


def compile_query(text: str) -> Compiled:
    """``text`` as a DuckDB boolean over the embedded store's message relation."""
    return compile_with(DUCKDB, text)


def compile_pg(text: str) -> Compiled:
    """``text`` as a PostgreSQL boolean over pg_schema.message_relation."""
    return compile_with(POSTGRES, text)


def compile_with(dialect: SqlDialect, text: str) -> Compiled:
    node = parse(text)
    if node is None:
        return Compiled("true", [], None)
    params: list[object] = []
    return Compiled(_sql(dialect, node, params), params, _prefilter(node))


def _sql(dialect: SqlDialect, node: Node, params: list[object]) -> str:
    if isinstance(node, Not):
        return f"(NOT {_sql(dialect, node.item, params)})"
    if isinstance(node, And | Or):
        joiner = " AND " if isinstance(node, And) else " OR "
        return "(" + joiner.join(_sql(dialect, item, params) for item in node.items) + ")"
    return _term_sql(dialect, node, params)


def _term_sql(dialect: SqlDialect, term: Term, params: list[object]) -> str:
    column = term.field.name
    if term.field.key is not None:
        column = dialect.keyed
        params.append(term.field.key)
    kind, op, values = term.field.kind, term.op, term.values
    negation = "NOT " if term.negated else ""
    if op == "null":
        return f"({column} IS {negation}NULL)"
    if op == "contains" or kind is Kind.LIST:
        params.append(values[0])
        found = f"coalesce({dialect.contains(kind, column)}, false)"
        return f"(NOT {found})" if op == "!=" else found
    if kind is Kind.STATUS:
        stored = list(dict.fromkeys(s for v in values for s in STATUSES[str(v)]))
        negation = "NOT " if op == "!=" or term.negated else ""
        values, op = tuple(stored), "in"
    params.extend(values)
    mark = dialect.mark(kind)
    if op == "in":
        marks = ", ".join([mark] * len(values))
        return _known(term, column, f"{column} {negation}IN ({marks})")
    if op == "like":
        return _known(term, column, f"{column} {negation}LIKE {mark} ESCAPE '\\'")
    if op == "between":
        return _known(term, column, f"{column} {negation}BETWEEN {mark} AND {mark}")
    return _known(term, column, f"{column} {op} {mark}")


def _known(term: Term, column: str, comparison: str) -> str:
    """``comparison`` (of ``column`` with parameters, never NULL) false where it is NULL.
    On a plain column that is ``(comparison AND column IS NOT NULL)``: the comparison is
    NULL exactly where the column is, and PostgreSQL's planner takes its terms as index
    conditions (status, last_event_time), which it cannot inside ``coalesce``."""
    if term.field.key is None:
        return f"({comparison} AND {column} IS NOT NULL)"
    return f"coalesce({comparison}, false)"


def _prefilter(node: Node) -> tuple[str, str] | None:
    terms = list(_conjuncts(node))
    for name in ("msg_id", "to_email"):
        for term in terms:
            if term.op == "=" and term.field.name == name and term.field.key is None:
                return (name, str(term.values[0]))
    return None


def _conjuncts(node: Node) -> list[Term]:
    if isinstance(node, Term):
        return [node]
    if isinstance(node, And):
        return [term for item in node.items for term in _conjuncts(item)]
    return []


def numbered(sql: str) -> str:
    """``sql`` with its ``?`` placeholders as ``$1``, ``$2``... (no literal in the SQL of
    pg_schema.py or of this compiler holds a ``?``)."""
    parts = sql.split("?")
    out = [parts[0]]
    for i, part in enumerate(parts[1:], 1):
        out.append(f"${i}{part}")
    return "".join(out)
