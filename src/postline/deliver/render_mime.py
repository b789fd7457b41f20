"""MIME bodies for rendered messages: text parts, attachments and the multipart tree.

The tree (RFC 2046 §5.1, RFC 2387)::

    multipart/mixed                     only with regular attachments
      multipart/related                 only with inline attachments that have a content_id
        multipart/alternative           only with more than one content (text, then html)
          text/plain, text/html
        inline parts (Content-ID: <id>, Content-Disposition: inline)
      attachments

Text is UTF-8 in canonical CRLF form; quoted-printable when at most a fifth of its octets
are non-ASCII (QP costs 3 octets for each of those, base64 4/3 for all), base64 otherwise
(RFC 2045 §6). Both encoders are binascii's C code. Attachments arrive base64-encoded
(SendGrid's ``content``) and are decoded and re-encoded in 76-character lines, which also
strips anything that is not base64. Boundaries start with ``=_``, which neither encoding
can produce (RFC 2045 §6.7 escapes ``=``; base64 has no ``_``), so no content can collide.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from postline.deliver.render_headers import CRLF, clean, fold
from postline.model.mail import Attachment, Content

_HIGH = bytes(range(128, 256))
_MIME = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*")
_PARAM = re.compile(r"[A-Za-z0-9!#$&^_.+-]+=(?:[\x21-\x7e]+|\"[\x20-\x7e]*\")")
_QUOTABLE = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")  # printable ASCII but " and \
_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/]")
# RFC 2231 §7: attribute-char, the octets allowed raw in an extended parameter value.
_ATTR_CHAR = frozenset(
    b"!#$&+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)
_PCT = tuple(chr(b) if b in _ATTR_CHAR else f"%{b:02X}" for b in range(256))
_SEGMENT = 60  # characters of an RFC 2231 value per continuation line
MAX_CONTENT_ID = 900  # "Content-ID: <" + id + ">" within a 998-octet line


class RenderError(ValueError):
    """The stored message cannot be rendered (no From address, too big after substitution,
    a content_id that no header can carry): accept refuses all of these, so only a message
    stored by an older version or written around accept gets here, and it is bounced."""


@dataclass(slots=True)
class Entity:
    """A MIME entity: its content fields (CRLF-terminated) and a body ending in CRLF."""

    mime: str
    headers: str
    body: bytes

    def to_bytes(self) -> bytes:
        return self.headers.encode("ascii") + b"\r\n" + self.body


def body_entity(contents: list[Content], attachments: list[Attachment], token: str) -> Entity:
    """The whole body tree of one message; ``token`` makes its boundaries."""
    parts = [text_entity(c.type, c.value) for c in contents] or [text_entity("text/plain", "")]
    root = parts[0] if len(parts) == 1 else multipart("alternative", parts, f"=_A{token}")
    inline = [a for a in attachments if a.content_id and a.disposition == "inline"]
    others = [a for a in attachments if not (a.content_id and a.disposition == "inline")]
    if inline:
        related = [root, *(attachment_entity(a) for a in inline)]
        root = multipart("related", related, f"=_R{token}", (f'type="{root.mime}"',))
    if others:
        root = multipart("mixed", [root, *(attachment_entity(a) for a in others)], f"=_M{token}")
    return root


_CACHE_UP_TO = 64 * 1024  # characters; larger texts are encoded every time


def text_entity(content_type: str, value: str) -> Entity:
    """A text part, quoted-printable or base64. The personalizations of one request share
    their contents, so the encoding is memoized (py-spy: 12% of the node's samples went to
    rendering under `postline bench e2e` before). Entities are never mutated."""
    if len(value) <= _CACHE_UP_TO:
        return _text_entity_cached(content_type, value)
    return _text_entity(content_type, value)


@functools.lru_cache(maxsize=256)
def _text_entity_cached(content_type: str, value: str) -> Entity:
    return _text_entity(content_type, value)


def _text_entity(content_type: str, value: str) -> Entity:
    mime, params = _content_type(content_type, "text/plain")
    if mime.startswith("text/"):
        params = ("charset=utf-8", *params)
    if "\r" in value:
        value = value.replace("\r\n", "\n").replace("\r", "\n")
    raw = value.encode("utf-8", "replace")
    high = len(raw) - len(raw.translate(None, _HIGH))
    if high * 5 <= len(raw):
        cte, body = "quoted-printable", binascii.b2a_qp(raw, istext=True).replace(b"\n", b"\r\n")
        if not body.endswith(b"\r\n"):
            body += b"=\r\n"  # a soft break: the text keeps its missing final newline
    else:
        cte, body = "base64", _base64_lines(raw.replace(b"\n", b"\r\n"))
    headers = _params_field("Content-Type", mime, params)
    return Entity(mime, headers + f"Content-Transfer-Encoding: {cte}{CRLF}", body)


def attachment_entity(att: Attachment) -> Entity:
    # The parameters are kept, charset too: a CSV in windows-1252 says so (issue 12).
    mime, params = _content_type(att.type or "", "application/octet-stream", keep_charset=True)
    disposition = "inline" if att.disposition == "inline" else "attachment"
    headers = _params_field("Content-Type", mime, [*params, *_param("name", att.filename)])
    headers += _params_field("Content-Disposition", disposition, _param("filename", att.filename))
    headers += f"Content-Transfer-Encoding: base64{CRLF}"
    if att.content_id:
        headers += f"Content-ID: <{_content_id(att.content_id)}>{CRLF}"
    return Entity(mime, headers, _base64_lines(_decode_base64(att.content)))


def _content_id(value: str) -> str:
    """The id raw, as the HTML refers to it; blanks, controls and brackets dropped."""
    cid = re.sub(r"[\x00-\x20\x7f<>]", "", value)
    if not cid.isascii() or len(cid) > MAX_CONTENT_ID:
        # No encoding exists for a Content-ID (RFC 2392 §2: an addr-spec); accept refuses it.
        raise RenderError(
            f"an attachment content_id is not ASCII of at most {MAX_CONTENT_ID} chars"
        )
    return cid


def multipart(
    subtype: str, parts: list[Entity], boundary: str, params: tuple[str, ...] = ()
) -> Entity:
    mime = f"multipart/{subtype}"
    headers = _params_field("Content-Type", mime, [f'boundary="{boundary}"', *params])
    delimiter = b"--" + boundary.encode("ascii") + b"\r\n"
    # The CRLF before each delimiter belongs to it (RFC 2046 §5.1.1), hence the extra one.
    body = b"".join(delimiter + p.to_bytes() + b"\r\n" for p in parts)
    return Entity(mime, headers, body + b"--" + boundary.encode("ascii") + b"--\r\n")


@functools.lru_cache(maxsize=256)
def _content_type(
    value: str, default: str, keep_charset: bool = False
) -> tuple[str, tuple[str, ...]]:
    """The MIME type in lower case and its well-formed parameters; a text part's charset is
    dropped (its text is always sent as UTF-8), an attachment's is kept."""
    head, _, rest = clean(value).partition(";")
    mime = head.strip().lower()
    if not _MIME.fullmatch(mime):
        return default, ()
    params = [p.strip() for p in rest.split(";")]
    return mime, tuple(
        p
        for p in params
        if _PARAM.fullmatch(p) and (keep_charset or not p.lower().startswith("charset="))
    )


def _params_field(name: str, value: str, params: Sequence[str]) -> str:
    tokens = [value, *params]
    return fold(name, [t + ";" for t in tokens[:-1]] + tokens[-1:])


def _param(key: str, value: str) -> list[str]:
    """``key="value"``, or RFC 2231 ``key*=utf-8''...`` (with continuations when long)."""
    value = clean(value)
    if _QUOTABLE.fullmatch(value) and len(value) <= _SEGMENT:
        return [f'{key}="{value}"']
    encoded = "".join(_PCT[b] for b in value.encode("utf-8", "replace"))
    if len(encoded) <= _SEGMENT:
        return [f"{key}*=utf-8''{encoded}"]
    segments: list[str] = []
    start = 0
    while start < len(encoded):
        end = min(start + _SEGMENT, len(encoded))
        pct = encoded.rfind("%", end - 2, end)  # never split a %XX triplet
        end = pct if pct > start else end
        segments.append(encoded[start:end])
        start = end
    charset = "utf-8''"
    return [f"{key}*{i}*={charset if i == 0 else ''}{s}" for i, s in enumerate(segments)]


def _decode_base64(content: str) -> bytes:
    try:
        return base64.b64decode(content)  # not validated: skips characters outside base64
    except (binascii.Error, ValueError):
        cleaned = _NOT_BASE64.sub("", content)
        cleaned = cleaned[: len(cleaned) - (len(cleaned) % 4 == 1)]
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4))


def _base64_lines(data: bytes) -> bytes:
    """Base64 in lines of 76 characters, each ending in CRLF (RFC 2045 §6.8)."""
    return base64.encodebytes(data).replace(b"\n", b"\r\n") or b"\r\n"
