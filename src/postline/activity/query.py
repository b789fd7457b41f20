"""SendGrid's Email Activity query language (``GET /v3/messages?query=...``), parsed.

The language, as SendGrid documents it (getting-started-email-activity-api, "Keywords and
Operator reference" and "Query reference"): ``field="value"`` terms combined with AND / OR /
NOT and parentheses; operators ``= != < > <= >=``, ``[NOT] BETWEEN``, ``[NOT] IN``,
``[NOT] LIKE``, ``IS [NOT] NULL``; ``TIMESTAMP "..."`` literals; ``Contains(array, "x")``
(SendGrid's own error: "CONTAINS expects an array or map type as the first argument");
``unique_args['key']``. Strings are delimited by ``"`` or ``'``; inside one, ``\\`` escapes
the delimiter and itself. Keywords and field names are case-insensitive, values are not
(except ``to_email``, stored lower-cased). Precedence is SQL's: NOT, then AND, then OR.

Strategy: tokenize (query_lex.py), parse by recursive descent into a small AST (bounded:
length, nesting depth, number of terms); query_sql.py compiles the AST to the DuckDB or
the PostgreSQL WHERE.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from postline.activity.query_ast import (
    ALIASES,
    FIELDS,
    KEYWORDS,
    KNOWN,
    OPS_BY_KIND,
    STATUSES,
    UNSTORED,
    And,
    Field,
    Kind,
    Node,
    Not,
    Or,
    Term,
)
from postline.activity.query_lex import QueryError as QueryError
from postline.activity.query_lex import T, Token, tokenize

MAX_LENGTH = 2000  # characters of decoded query text
MAX_DEPTH = 32  # nested parentheses and NOTs
MAX_TERMS = 100  # comparisons / Contains(...) in one query
MAX_IN_VALUES = 100  # values in one IN (...) list

# -- parser ----------------------------------------------------------------------------------

_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?)?"
    r"(Z|[+-]\d{2}:?\d{2})?",
    re.IGNORECASE,
)
_INTEGER = re.compile(r"-?[0-9]+")
INT_MIN, INT_MAX = -(2**63), 2**63 - 1  # BIGINT


def parse_timestamp(text: str, pos: int) -> datetime:
    """An ISO 8601 / RFC 3339 instant (SendGrid's examples: ``2017-11-07T23:13:58Z``,
    ``2018-02-01T00:00:00.000Z``, ``YYYY-MM-DD HH:mm:SS``) as a naive UTC datetime.
    Without an offset the time is UTC."""
    m = _TIME.fullmatch(text.strip())
    bad = QueryError(f"bad timestamp {text!r}: expected e.g. 2026-01-01T00:00:00Z", pos)
    if m is None:
        raise bad
    year, month, day, hour, minute, second, fraction, zone = m.groups()
    try:
        moment = datetime(
            int(year),
            int(month),
            int(day),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((fraction or "0")[:6].ljust(6, "0")),
        )
        if zone and zone.upper() != "Z":
            digits = zone[1:].replace(":", "")
            hours, minutes = int(digits[:2]), int(digits[2:])
            if hours > 23 or minutes > 59:
                raise ValueError(zone)
            offset = timedelta(hours=hours, minutes=minutes)
            moment = moment - offset if zone[0] == "+" else moment + offset
    except (ValueError, OverflowError):
        raise bad from None
    return moment


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.i = 0
        self.depth = 0
        self.terms = 0

    def peek(self, ahead: int = 0) -> Token:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)]

    def next(self) -> Token:
        token = self.peek()
        self.i = min(self.i + 1, len(self.tokens) - 1)
        return token

    def at(self, kind: T, text: str, ahead: int = 0) -> bool:
        token = self.peek(ahead)
        return token.kind is kind and token.text == text

    def take(self, kind: T, text: str) -> Token | None:
        return self.next() if self.at(kind, text) else None

    def expect(self, text: str, what: str) -> Token:
        token = self.next()
        if token.kind is not T.PUNCT or token.text != text:
            raise QueryError(f"expected {text!r} {what}, got {token.show()}", token.pos)
        return token

    def enter(self, token: Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise QueryError(f"nesting too deep: at most {MAX_DEPTH} levels", token.pos)

    def count_term(self, token: Token) -> None:
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise QueryError(f"too many terms: at most {MAX_TERMS}", token.pos)

    # query := or ; or := and (OR and)* ; and := not (AND not)* ; not := NOT not | primary
    def query(self) -> Node:
        node = self.disjunction()
        token = self.peek()
        if token.kind is T.END:
            return node
        if token.text == ")":
            raise QueryError("unbalanced parenthesis: ')' without '('", token.pos)
        raise QueryError(f"expected AND, OR or end of query, got {token.show()}", token.pos)

    def disjunction(self) -> Node:
        items = [self.conjunction()]
        while self.take(T.WORD, "or"):
            items.append(self.conjunction())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def conjunction(self) -> Node:
        items = [self.negation()]
        while self.take(T.WORD, "and"):
            items.append(self.negation())
        return items[0] if len(items) == 1 else And(tuple(items))

    def negation(self) -> Node:
        token = self.peek()
        if not self.take(T.WORD, "not"):
            return self.primary()
        self.enter(token)
        item = self.negation()
        self.depth -= 1
        return Not(item)

    def primary(self) -> Node:
        token = self.peek()
        if self.take(T.PUNCT, "("):
            self.enter(token)
            node = self.disjunction()
            close = self.peek()
            if close.kind is T.END:
                raise QueryError("unbalanced parenthesis: '(' is never closed", token.pos)
            self.expect(")", "or AND / OR")
            self.depth -= 1
            return node
        if token.kind is T.WORD and token.text == "contains" and self.at(T.PUNCT, "(", 1):
            return self.contains()
        if token.kind is T.WORD and token.text not in KEYWORDS:
            return self.term()
        before = self.tokens[self.i - 1] if self.i else None
        if token.kind is T.END or (token.kind is T.PUNCT and token.text == ")"):
            after = f" after {before.raw}" if before else ""
            raise QueryError(f"missing operand{after}: expected a term", token.pos)
        raise QueryError(f"expected a field name, got {token.show()}", token.pos)

    def field(self) -> Field:
        token = self.next()
        name = ALIASES.get(token.text, token.text)
        if token.kind is not T.WORD or token.text in KEYWORDS:
            raise QueryError(f"expected a field name, got {token.show()}", token.pos)
        if name not in FIELDS:
            if name in UNSTORED:
                message = f"'{token.raw}' is a SendGrid field Postline does not store"
            else:
                message = f"invalid syntax: '{token.raw}' is not a known field"
            raise QueryError(f"{message}; known fields: {KNOWN}", token.pos)
        bracket = self.peek()
        if not self.take(T.PUNCT, "["):
            return Field(name, None, token.pos)
        if name != "unique_args":
            raise QueryError(f"only unique_args takes a ['key'], not {token.raw}", bracket.pos)
        key = self.next()
        if key.kind is not T.STRING:
            raise QueryError(
                f"expected a quoted key in unique_args[...], got {key.show()}", key.pos
            )
        self.expect("]", "after the unique_args key")
        return Field(name, key.text, token.pos)

    def contains(self) -> Term:
        token = self.next()
        self.count_term(token)
        self.next()  # "(" (seen by primary)
        first = self.peek()
        field = self.field()
        if field.kind not in (Kind.LIST, Kind.MAP):
            raise QueryError(
                "CONTAINS expects an array or map type as the first argument "
                '(categories, events or unique_args; for text use LIKE "%...%")',
                first.pos,
            )
        self.expect(",", "after the Contains field")
        value = self.next()
        if value.kind is not T.STRING:
            raise QueryError(f"expected a quoted value after ',', got {value.show()}", value.pos)
        self.expect(")", "to close Contains(")
        return Term(field, "contains", (value.text,))

    def term(self) -> Term:
        start = self.peek()
        self.count_term(start)
        field = self.field()
        token = self.peek()
        negated = self.take(T.WORD, "not") is not None
        if negated and not any(self.at(T.WORD, w) for w in ("between", "in", "like")):
            raise QueryError(
                f"expected BETWEEN, IN or LIKE after NOT, got {self.peek().show()}", self.peek().pos
            )
        token = self.next()
        if token.kind is T.OP:
            self.allow(field, token.text, token)
            return Term(field, token.text, (self.value(field, token),))
        word = token.text if token.kind is T.WORD else ""
        if word == "between":
            self.allow(field, word, token)
            low = self.value(field, token)
            between_and = self.next()
            if between_and.kind is not T.WORD or between_and.text != "and":
                raise QueryError(
                    f"expected AND in BETWEEN, got {between_and.show()}", between_and.pos
                )
            return Term(field, word, (low, self.value(field, between_and)), negated)
        if word == "in":
            self.allow(field, word, token)
            return Term(field, word, self.values(field), negated)
        if word == "like":
            self.allow(field, word, token)
            return Term(field, word, (self.pattern(field, token),), negated)
        if word == "is":
            null_negated = self.take(T.WORD, "not") is not None
            null = self.next()
            if null.kind is not T.WORD or null.text != "null":
                raise QueryError(f"expected NULL after IS, got {null.show()}", null.pos)
            self.allow(field, "null", token)
            return Term(field, "null", (), null_negated)
        raise QueryError(f"expected an operator after {start.raw}, got {token.show()}", token.pos)

    def allow(self, field: Field, op: str, token: Token) -> None:
        kind = field.kind
        if op in OPS_BY_KIND[kind]:
            return
        if kind is Kind.LIST:
            message = f'{field.name} is a list: use Contains({field.name}, "value")'
        elif kind is Kind.MAP:
            message = (
                "unique_args is a map: use unique_args['key'] or Contains(unique_args, \"key\")"
            )
        else:
            message = f"{token.raw.upper()} does not apply to {field.name} ({kind.value})"
        raise QueryError(message, token.pos)

    def values(self, field: Field) -> tuple[object, ...]:
        opening = self.expect("(", "after IN")
        items = [self.value(field, opening)]
        while self.take(T.PUNCT, ","):
            if len(items) == MAX_IN_VALUES:
                raise QueryError(f"too many IN values: at most {MAX_IN_VALUES}", self.peek().pos)
            items.append(self.value(field, self.tokens[self.i - 1]))
        close = self.peek()
        if close.kind is T.END:
            raise QueryError("unbalanced parenthesis: '(' is never closed", opening.pos)
        self.expect(")", "or ',' in the IN list")
        return tuple(items)

    def pattern(self, field: Field, after: Token) -> str:
        token = self.peek()
        pattern = self.value(field, after)
        assert isinstance(pattern, str)
        if re.search(r"(?<!\\)(\\\\)*\\$", pattern):
            raise QueryError("LIKE pattern ends with the escape character \\", token.pos)
        return pattern

    def value(self, field: Field, after: Token) -> object:
        token = self.next()
        typed = token.kind is T.WORD and token.text == "timestamp"
        if typed:
            token = self.next()
            if token.kind is not T.STRING:
                raise QueryError(
                    f"expected a quoted time after TIMESTAMP, got {token.show()}", token.pos
                )
        if token.kind is T.END:
            raise QueryError(f"missing operand: expected a value after {after.raw}", token.pos)
        if token.kind not in (T.STRING, T.NUMBER):
            raise QueryError(f"expected a value after {after.raw}, got {token.show()}", token.pos)
        return coerce(field, token, typed)


def coerce(field: Field, token: Token, typed: bool) -> object:
    kind = field.kind
    wrong = QueryError(
        f"wrong type: {field.name} is {_article(kind)}, got {token.show()}", token.pos
    )
    if kind is Kind.TIME:
        if token.kind is not T.STRING:
            raise wrong
        return parse_timestamp(token.text, token.pos)
    if typed:
        raise wrong
    if kind is Kind.INT:
        if not _INTEGER.fullmatch(token.text.strip()):
            raise wrong
        number = int(token.text)
        if not INT_MIN <= number <= INT_MAX:
            raise QueryError(f"integer out of range: {token.text}", token.pos)
        return number
    if token.kind is not T.STRING:
        raise wrong
    if kind is Kind.EMAIL:
        return token.text.lower()
    if kind is Kind.STATUS:
        status = token.text.lower()
        if status not in STATUSES:
            known = ", ".join(STATUSES)
            raise QueryError(f"unknown status {token.text!r}: one of {known}", token.pos)
        return status
    return token.text


def _article(kind: Kind) -> str:
    return {
        Kind.TEXT: "a string",
        Kind.EMAIL: "a string",
        Kind.STATUS: "a status string",
        Kind.INT: "an integer",
        Kind.TIME: 'a timestamp (TIMESTAMP "2026-01-01T00:00:00Z")',
        Kind.LIST: "a list of strings",
        Kind.MAP: "a map",
    }[kind]


def parse(text: str) -> Node | None:
    """The syntax tree of ``text``; None for an empty query (everything matches)."""
    if len(text) > MAX_LENGTH:
        raise QueryError(
            f"query too long: {len(text)} characters, at most {MAX_LENGTH}", MAX_LENGTH
        )
    parser = _Parser(text)
    if parser.peek().kind is T.END:
        return None
    return parser.query()
