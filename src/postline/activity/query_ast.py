"""The Email Activity query language's vocabulary (fields, their kinds, the operators each
allows, the status spellings) and its syntax tree: what query.py parses into and
query_sql.py compiles from."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Kind(Enum):
    TEXT = "string"
    EMAIL = "email"  # a string, stored and compared lower-cased
    STATUS = "status"
    INT = "integer"
    TIME = "timestamp"
    LIST = "list"
    MAP = "map"


FIELDS: dict[str, Kind] = {
    "msg_id": Kind.TEXT,
    "to_email": Kind.EMAIL,
    "from_email": Kind.TEXT,
    "subject": Kind.TEXT,
    "status": Kind.STATUS,
    "template_id": Kind.TEXT,
    "asm_group_id": Kind.INT,
    "outbound_ip": Kind.TEXT,
    "last_event_time": Kind.TIME,
    "opens_count": Kind.INT,
    "clicks_count": Kind.INT,
    "categories": Kind.LIST,
    "events": Kind.LIST,
    "unique_args": Kind.MAP,
}
# SendGrid's names for the same columns (its query reference lists `clicks` and
# `unsubscribe_group_id`).
ALIASES = {"clicks": "clicks_count", "opens": "opens_count", "unsubscribe_group_id": "asm_group_id"}
# In SendGrid's reference but not stored by Postline: named in the error, not "unknown".
UNSTORED = [
    "template_name",
    "campaign_name",
    "campaign_id",
    "api_key_id",
    "api_key_name",
    "originating_ip",
    "teammate",
    "unsubscribe_group_name",
]
# The status a query may name -> the stored values it matches. SendGrid's OpenAPI says
# "processed"; the store's brief says "processing": either spelling matches both.
STATUSES: dict[str, tuple[str, ...]] = {
    "processed": ("processed", "processing"),
    "processing": ("processed", "processing"),
    "delivered": ("delivered",),
    "not_delivered": ("not_delivered",),
}
KNOWN = ", ".join(sorted([*FIELDS, *ALIASES]))
ORDERED = ("<", ">", "<=", ">=")
OPS_BY_KIND: dict[Kind, frozenset[str]] = {
    Kind.TEXT: frozenset(["=", "!=", *ORDERED, "in", "like", "between", "null"]),
    Kind.EMAIL: frozenset(["=", "!=", *ORDERED, "in", "like", "between", "null"]),
    Kind.STATUS: frozenset(["=", "!=", "in", "null"]),
    Kind.INT: frozenset(["=", "!=", *ORDERED, "in", "between", "null"]),
    Kind.TIME: frozenset(["=", "!=", *ORDERED, "between", "null"]),
    Kind.LIST: frozenset(["=", "!=", "contains"]),
    Kind.MAP: frozenset(["contains"]),
}
KEYWORDS = frozenset(
    ["and", "or", "not", "between", "in", "like", "is", "null", "timestamp", "true", "false"]
)

# -- syntax tree -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    name: str  # canonical column name
    key: str | None  # unique_args['key']
    pos: int

    @property
    def kind(self) -> Kind:
        return Kind.TEXT if self.key is not None else FIELDS[self.name]


@dataclass(frozen=True)
class Term:
    """``field op values``; op is one of = != < > <= >= in like between null contains,
    ``negated`` for NOT IN / NOT LIKE / NOT BETWEEN / IS NOT NULL."""

    field: Field
    op: str
    values: tuple[object, ...]
    negated: bool = False


@dataclass(frozen=True)
class Not:
    item: Node


@dataclass(frozen=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Node, ...]


Node = Term | Not | And | Or
