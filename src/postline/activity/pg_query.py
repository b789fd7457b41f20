"""The Email Activity query language compiled to PostgreSQL (cluster mode's store).

The language, its parser, its limits and its error messages are query.py's (the same
``parse``); only the emitted WHERE differs, so query.py's DuckDB output stays exactly
as it was. The PostgreSQL form keeps query.py's rules: every literal a ``?`` parameter
(numbered ``$n`` by the store), every term two-valued (``coalesce(..., false)``), and
the same ``prefilter`` (an equality on ``msg_id`` or ``to_email`` among the top-level
conjuncts, pushed into the event scan so an index serves it).

Differences forced by the dialect, over pg_schema.message_relation's columns:

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

from postline.activity.query import (
    STATUSES,
    And,
    Compiled,
    Kind,
    Node,
    Not,
    Or,
    Term,
    _prefilter,
    parse,
)

_TYPES = {Kind.INT: "bigint", Kind.TIME: "timestamp"}


def compile_pg(text: str) -> Compiled:
    """``text`` as a PostgreSQL boolean over pg_schema.message_relation."""
    node = parse(text)
    if node is None:
        return Compiled("true", [], None)
    params: list[object] = []
    return Compiled(_sql(node, params), params, _prefilter(node))


def _sql(node: Node, params: list[object]) -> str:
    if isinstance(node, Not):
        return f"(NOT {_sql(node.item, params)})"
    if isinstance(node, And | Or):
        joiner = " AND " if isinstance(node, And) else " OR "
        return "(" + joiner.join(_sql(item, params) for item in node.items) + ")"
    return _term_sql(node, params)


def _term_sql(term: Term, params: list[object]) -> str:
    column = term.field.name
    if term.field.key is not None:
        column = '((unique_args ->> ?::text) COLLATE "C")'
        params.append(term.field.key)
    kind, op, values = term.field.kind, term.op, term.values
    negation = "NOT " if term.negated else ""
    if op == "null":
        return f"({column} IS {negation}NULL)"
    if op == "contains" or kind is Kind.LIST:
        params.append(values[0])
        if kind is Kind.MAP:
            found = f"coalesce(jsonb_exists({column}, ?::text), false)"
        else:
            found = f"coalesce(?::text = ANY({column}), false)"
        return f"(NOT {found})" if op == "!=" else found
    if kind is Kind.STATUS:
        stored = list(dict.fromkeys(s for v in values for s in STATUSES[str(v)]))
        negation = "NOT " if op == "!=" or term.negated else ""
        values, op = tuple(stored), "in"
    params.extend(values)
    mark = f"?::{_TYPES.get(kind, 'text')}"
    if op == "in":
        marks = ", ".join([mark] * len(values))
        return f"coalesce({column} {negation}IN ({marks}), false)"
    if op == "like":
        return f"coalesce({column} {negation}LIKE {mark} ESCAPE '\\', false)"
    if op == "between":
        return f"coalesce({column} {negation}BETWEEN {mark} AND {mark}, false)"
    return f"coalesce({column} {op} {mark}, false)"


def numbered(sql: str) -> str:
    """``sql`` with its ``?`` placeholders as ``$1``, ``$2``... (no literal in the SQL of
    pg_schema.py or of this compiler holds a ``?``)."""
    parts = sql.split("?")
    out = [parts[0]]
    for i, part in enumerate(parts[1:], 1):
        out.append(f"${i}{part}")
    return "".join(out)
