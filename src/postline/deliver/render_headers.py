"""Header fields for rendered messages: folding, RFC 2047 encoded-words, addresses, dates.

Every function returns whole fields ending in CRLF, folded so that lines stay under 78
characters where the text allows (RFC 5322 §2.1.1) and a line holding an encoded-word
stays within 76 (RFC 2047 §2). Values never carry a CR or LF of their own: a run of them
becomes one space (RFC 5322 §2.2, and no header injection).

Raw text is printable ASCII only. Anything else (non-ASCII, control characters, leading or
trailing blanks, runs of blanks, a word that looks like an encoded-word) is sent as
encoded-words, Q for mostly-ASCII text, B otherwise (RFC 2047 §4), each split on a
character boundary (§5). The exception is an address whose local part is not ASCII: it can
only be sent raw in UTF-8 under SMTPUTF8 (RFC 6531, RFC 6532 §3.2), which the caller is told.
"""

from __future__ import annotations

import base64
import functools
import re
import time

from postline.model.domain import a_label
from postline.model.mail import EmailAddress

CRLF = "\r\n"
LINE = 78  # RFC 5322 §2.1.1: SHOULD be no more than 78 characters
EW_LINE = 76  # RFC 2047 §2: a line with an encoded-word is at most 76 characters
EW_MAX = 75  # RFC 2047 §2: an encoded-word is at most 75 characters
MAX_WORD = 900  # a raw word longer than this could not be folded under 998 octets

_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_PLAIN = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*")
_ATOMS = re.compile(rf"[{_ATEXT}]+(?: [{_ATEXT}]+)*")
_QUOTABLE = re.compile(r"[\x20-\x7e]*")
# RFC 6531 §3.3: UTF-8 is atext too, for local parts sent under SMTPUTF8.
_DOT_ATOM = re.compile(rf"[{_ATEXT}\u0080-\U0010ffff]+(?:\.[{_ATEXT}\u0080-\U0010ffff]+)*")
_SIMPLE_ADDR = re.compile(
    r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
)
_BREAKS = re.compile(r"[\r\n]+")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]+")
_HIGH = bytes(range(128, 256))
# RFC 2047 §5(3): the characters allowed raw in a Q word wherever it stands (even a phrase).
_Q_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
_Q = tuple(chr(b) if b in _Q_SAFE else "_" if b == 0x20 else f"={b:02X}" for b in range(256))
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def fold(name: str, tokens: list[str], limit: int = LINE) -> str:
    """``Name: tok tok`` with a fold (CRLF SP) before any token that would pass ``limit``."""
    if len(name) + len(tokens) + sum(map(len, tokens)) < limit:  # fits on one line
        return f"{name}: {' '.join(tokens)}{CRLF}"
    lines: list[str] = []
    line = name + ":"
    for i, tok in enumerate(tokens):
        if i and len(line) + 1 + len(tok) > limit:
            lines.append(line)
            line = " " + tok
        else:
            line += " " + tok
    lines.append(line)
    return CRLF.join(lines) + CRLF


def clean(value: str) -> str:
    """The value without line breaks: each run of CR/LF becomes one space."""
    if "\r" in value or "\n" in value:
        return _BREAKS.sub(" ", value)
    return value


def unstructured(name: str, value: str) -> str:
    """An unstructured field (Subject, custom headers), raw when plain, else encoded-words."""
    value = clean(value)
    if _is_plain(value):
        if len(name) + len(value) < LINE - 1:
            return f"{name}: {value}{CRLF}"
        return fold(name, value.split(" "))
    return fold(name, encoded_words(value, _first_budget(name)), EW_LINE)


def _is_plain(value: str) -> bool:
    if not value:
        return True
    return (
        _PLAIN.fullmatch(value) is not None
        and "=?" not in value
        and (len(value) <= MAX_WORD or max(map(len, value.split(" "))) <= MAX_WORD)
    )


def _first_budget(name: str) -> int:
    # The first encoded-word shares its line with "Name: "; a very long name gets 20.
    return max(EW_LINE - len(name) - 2, 20)


def encoded_words(text: str, first: int = EW_MAX) -> list[str]:
    """``text`` as UTF-8 encoded-words; the first at most ``first`` characters, then 75."""
    raw = text.encode("utf-8", "replace")
    high = len(raw) - len(raw.translate(None, _HIGH))
    # Q costs 3 octets per non-ASCII octet, B 4/3 per octet: Q is shorter below ~1/5.
    if high * 5 < len(raw):
        return _q_words(text, first)
    return _b_words(raw, first)


def _b_words(raw: bytes, first: int) -> list[str]:
    words: list[str] = []
    start, budget = 0, first
    while start < len(raw):
        end = min(start + (budget - 12) // 4 * 3, len(raw))
        while end < len(raw) and raw[end] & 0xC0 == 0x80:  # never split a character
            end -= 1
        words.append(f"=?utf-8?b?{base64.b64encode(raw[start:end]).decode('ascii')}?=")
        start, budget = end, EW_MAX
    return words


def _q_words(text: str, first: int) -> list[str]:
    words: list[str] = []
    current: list[str] = []
    size, budget = 0, first - 12
    for ch in text:
        piece = _Q[ord(ch)] if ch < "\x80" else "".join(map(_Q.__getitem__, ch.encode()))
        if current and size + len(piece) > budget:
            words.append(f"=?utf-8?q?{''.join(current)}?=")
            current, size, budget = [], 0, EW_MAX - 12
        current.append(piece)
        size += len(piece)
    if current:
        words.append(f"=?utf-8?q?{''.join(current)}?=")
    return words


def address_field(name: str, addresses: list[EmailAddress]) -> tuple[str, bool]:
    """``To: A <a@x>, b@y`` folded between tokens; True if it needs SMTPUTF8."""
    tokens: list[str] = []
    utf8 = False
    for i, address in enumerate(addresses):
        spec, needs = addr_spec(address.email)
        utf8 |= needs
        first = _first_budget(name) if i == 0 else EW_MAX
        phrase = _phrase(address.name or "", first)
        mailbox = [*phrase, f"<{spec}>"] if phrase else [spec]
        if i < len(addresses) - 1:
            mailbox[-1] += ","
        tokens += mailbox
    limit = EW_LINE if any(t.startswith("=?") for t in tokens) else LINE
    return fold(name, tokens, limit), utf8


def _phrase(name: str, first: int) -> list[str]:
    """A display name as phrase tokens: atoms, one quoted-string, or encoded-words."""
    name = clean(name).strip(" \t")
    if not name:
        return []
    if _ATOMS.fullmatch(name) and "=?" not in name:
        atoms = name.split(" ")
        if max(map(len, atoms)) <= MAX_WORD:  # else no fold keeps its line under 998
            return atoms
        return encoded_words(name, first)
    if _QUOTABLE.fullmatch(name) and len(name) <= 60 and "=?" not in name:
        return ['"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"']
    return encoded_words(name, first)


def addr_spec(email: str) -> tuple[str, bool]:
    """``local@domain`` ready for a header and the envelope; True if it needs SMTPUTF8.

    A non-ASCII domain is sent as its A-label (IDNA2008, UTS #46: ``faß`` is ``xn--fa-hia``,
    not IDNA2003's ``fass``), in the header as in the envelope, which needs no extension; only
    a non-ASCII local part needs SMTPUTF8. A local part that is not a dot-atom is quoted
    (RFC 5321 §4.1.2).
    """
    if _SIMPLE_ADDR.fullmatch(email):
        return email, False
    email = _CONTROLS.sub("", email).strip()
    local, at, domain = email.rpartition("@")
    if not at:
        local, domain = email, ""
    if not domain.isascii():  # one IDNA2008 refuses stays UTF-8: SMTPUTF8 (RFC 6531 §3.2)
        domain = a_label(domain) or domain
    if not _DOT_ATOM.fullmatch(local):
        local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    spec = f"{local}@{domain}" if at else local
    return spec, not spec.isascii()


@functools.lru_cache(maxsize=64)
def format_date(timestamp: float) -> str:
    """RFC 5322 §3.3 date-time in UTC, e.g. ``Tue, 02 Jan 2024 03:04:05 +0000``.

    Cached: the messages of one request share their acceptance time, the Date of each."""
    t = time.gmtime(timestamp)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"
    )


def msg_id(message_id: str) -> str:
    """``<id>``: brackets added if missing, blanks and controls removed."""
    core = re.sub(r"[\x00-\x20\x7f<>]", "", message_id)
    return f"<{core}>"
