"""The tokens of SendGrid's Email Activity query language (activity/query.py parses them):
words (keywords and field names, lower-cased), strings in ``"`` or ``'`` with ``\\``
escaping the delimiter and itself, integers, operators (``<>`` is ``!=``), punctuation.
Every error names its position."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum


class QueryError(Exception):
    """A query SendGrid would answer with 400: ``message`` says why, ``position`` where."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} (at character {position})")
        self.message = message
        self.position = position


# -- tokens ----------------------------------------------------------------------------------


class T(Enum):
    WORD = "word"
    STRING = "string"
    NUMBER = "number"
    OP = "operator"
    PUNCT = "punctuation"
    END = "end of query"


@dataclass(frozen=True)
class Token:
    kind: T
    text: str  # words lower-cased; strings unescaped
    pos: int
    raw: str = ""

    def show(self) -> str:
        if self.kind is T.END:
            return "end of query"
        return self.raw if self.kind is T.STRING else repr(self.raw)


_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"-?[0-9]+")
_OPERATOR = re.compile(r"<=|>=|!=|<>|=|<|>")
_ESCAPABLE = "\\\"'"
_CURLY = "\u201c\u201d\u2018\u2019"


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    i = 0
    while i < len(text):
        c = text[i]
        if m := _SPACE.match(text, i):
            i = m.end()
        elif c in "\"'":
            token = _string(text, i)
            tokens.append(token)
            i += len(token.raw)
        elif m := _WORD.match(text, i):
            tokens.append(Token(T.WORD, m.group().lower(), i, m.group()))
            i = m.end()
        elif m := _NUMBER.match(text, i):
            tokens.append(Token(T.NUMBER, m.group(), i, m.group()))
            i = m.end()
        elif m := _OPERATOR.match(text, i):
            op = "!=" if m.group() == "<>" else m.group()
            tokens.append(Token(T.OP, op, i, m.group()))
            i = m.end()
        elif c in "(),[]":
            tokens.append(Token(T.PUNCT, c, i, c))
            i += 1
        elif c in _CURLY:
            raise QueryError(f"typographic quote {c!r}: use straight quotes (\" or ')", i)
        else:
            raise QueryError(f"unexpected character {c!r}", i)
    tokens.append(Token(T.END, "", len(text)))
    return tokens


def _string(text: str, start: int) -> Token:
    quote = text[start]
    out: list[str] = []
    i = start + 1
    while i < len(text):
        c = text[i]
        if c == quote:
            return Token(T.STRING, "".join(out), start, text[start : i + 1])
        if c == "\\":
            if i + 1 >= len(text):
                break
            if text[i + 1] not in _ESCAPABLE:
                raise QueryError(f"invalid escape \\{text[i + 1]}: use \\\\, \\\" or \\'", i)
            out.append(text[i + 1])
            i += 2
            continue
        if "\ud800" <= c <= "\udfff":
            raise QueryError("invalid character (lone surrogate) in string", i)
        out.append(c)
        i += 1
    raise QueryError(f"unterminated string: no closing {quote}", start)
