"""How big a stored message can get once its substitutions are made (without rendering it).

Legacy substitutions replace each key by its value in the subject, the reply-to addresses,
the contents and the custom header values (:mod:`postline.deliver.render`), so a 50 KB
request whose 10 KB value stands behind a 3-character key repeated through the content
turns into 100 MB per personalization, and a 310 KB one into a gigabyte. Accept refuses
what could grow past :data:`MAX_MESSAGE_BYTES`, and rendering refuses what is past
:data:`RENDER_LIMIT`.

The measure is the one of the 413 check (``accept.validate.message_size``): UTF-8 octets
of the contents plus decoded attachment octets, here with the subject and custom header
values and after substitution, so a substitution can never produce a message that could
not have been sent written out. The transfer encodings rendering adds come on top and are
bounded: base64 ×1.37 (attachments, mostly non-ASCII text), quoted-printable at most ×3.1
(text made only of ``=`` or controls; ×1.0–1.1 for ordinary text), encoded-words at most
×4 of a header value; so an accepted message renders into at most ~95 MB, ~41 MB for one
that is all attachments.

Two upper bounds of the growth, neither rendering anything:

* coarse, O(keys): the replacements in a text do not overlap and each covers at least the
  shortest key, so a text of n characters takes at most n // shortest of them, each adding
  at most the largest growth;
* exact, O(keys × text): Σ growth(key) × ``str.count(text, key)`` over the keys that grow
  (``str.count`` is the most non-overlapping occurrences a key can have). Computed only
  when the coarse bound is over the limit, and only within :data:`WORK_BUDGET` characters
  scanned per personalization (about 10 ms), past which the coarse bound stands.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from postline.model.mail import MailBody, Personalization

MAX_MESSAGE_BYTES = 30 * 1024 * 1024  # SendGrid's limit of a whole message
RENDER_LIMIT = 2 * MAX_MESSAGE_BYTES  # rendering refuses beyond (accept let it through?)
WORK_BUDGET = 20_000_000  # characters str.count may scan for one personalization
REQUEST_BUDGET = 100_000_000  # ... and for all personalizations of one request


def octets(text: str) -> int:
    """UTF-8 length; free for ASCII (``isascii`` reads a flag of the string)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "replace"))


class SizeBound:
    """Upper bounds of the expanded size of each personalization of one stored body.

    The body's texts are shared by every personalization: their key counts are cached.
    """

    def __init__(self, body: MailBody, request_budget: int = REQUEST_BUDGET) -> None:
        self._subject = body.subject
        self._texts = [c.value for c in body.content or ()]
        self._texts += list((body.headers or {}).values())
        for a in [body.reply_to] if body.reply_to else body.reply_to_list or ():
            self._texts += [a.email, a.name] if a.name else [a.email]  # substituted too
        # base64 length * 3/4 bounds the decoded length (the 413 check counts it exactly)
        attachments = sum(len(a.content) * 3 // 4 for a in body.attachments or ())
        self._shared = (self._texts, sum(map(len, self._texts)), sum(map(octets, self._texts)))
        self._attachments = attachments
        # a personalization without a subject or headers of its own: most of them
        self._plain = self._measure([body.subject] if body.subject else [])
        self._counts: dict[str, int] = {}
        self._budget = request_budget

    def size(self, pers: Personalization, growing: Growing | None = None) -> int:
        """Octets of the message after substitution, at most (see the module docstring).

        ``growing``: :func:`growing_keys` of the personalization, when already known.
        """
        own, length, base = self._own(pers)
        growing = growing or growing_keys(pers.substitutions)
        if growing is None:
            return base
        coarse = length // growing.shortest * growing.largest
        if base + coarse < MAX_MESSAGE_BYTES:
            return base + coarse
        work = len(growing.keys) * length
        if work > WORK_BUDGET or work > self._budget:
            return base + coarse
        self._budget -= work
        return base + min(coarse, self._exact(growing.keys, own))

    def fits(self, extremes: tuple[int, int]) -> bool:
        """The coarse bound of a request whose personalizations have no texts of their own,
        from :func:`growth_extremes`: True when none of them can grow past the limit."""
        shortest, largest = extremes
        _, length, base = self._plain
        return largest == 0 or base + length // shortest * largest < MAX_MESSAGE_BYTES

    def _own(self, pers: Personalization) -> tuple[list[str], int, int]:
        """The personalization's own texts, the length of all its texts, its base size."""
        if pers.subject is None and not pers.headers:
            return self._plain
        subject = pers.subject if pers.subject is not None else self._subject
        own = [subject] if subject else []
        return self._measure(own + list((pers.headers or {}).values()))

    def _measure(self, own: list[str]) -> tuple[list[str], int, int]:
        _, length, octets_ = self._shared
        length += sum(map(len, own))
        return own, length, octets_ + sum(map(octets, own)) + self._attachments

    def _exact(self, growing: list[tuple[str, int]], own: list[str]) -> int:
        total = 0
        for key, growth in growing:
            shared = self._counts.get(key)
            if shared is None:
                shared = self._counts[key] = _count(self._texts, key)
            total += growth * (shared + _count(own, key))
        return total


def growth_extremes(personalizations: Iterable[Personalization]) -> tuple[int, int] | None:
    """(shortest growing key, largest growth) over a whole request in one tight pass, or
    None when a personalization has texts of its own (then: one by one, ``SizeBound.size``).
    A largest growth of 0 means no substitution makes anything longer. With
    :meth:`SizeBound.fits` this settles most requests at once (bench accept: 100
    personalizations in ~15 µs instead of ~95 µs one by one)."""
    shortest, largest = 1 << 62, 0
    for pers in personalizations:
        if pers.subject is not None or pers.headers:
            return None
        subs = pers.substitutions
        if not subs:
            continue
        for key, value in subs.items():
            # octets of the value: exact for ASCII, at most 4 a character otherwise
            n = len(key)
            growth = (len(value) if value.isascii() else 4 * len(value)) - n
            if growth > 0 and n:
                if n < shortest:
                    shortest = n
                if growth > largest:
                    largest = growth
    return shortest, largest


class Growing(NamedTuple):
    """The keys of one personalization that make a text longer, and their extremes."""

    keys: list[tuple[str, int]]  # (key, octets one replacement adds)
    shortest: int  # characters of the shortest of those keys
    largest: int  # the largest growth


def growing_keys(substitutions: dict[str, str] | None) -> Growing | None:
    """The keys that grow a text (None when none does: values no longer than their keys)."""
    if not substitutions:
        return None
    keys: list[tuple[str, int]] = []
    shortest, largest = 1 << 62, 0
    for key, value in substitutions.items():
        # octets() inlined: this runs for every personalization of every request
        growth = (len(value) if value.isascii() else octets(value)) - (
            len(key) if key.isascii() else octets(key)
        )
        if growth > 0 and key:  # rendering ignores an empty key
            keys.append((key, growth))
            shortest, largest = min(shortest, len(key)), max(largest, growth)
    return Growing(keys, shortest, largest) if keys else None


def _count(texts: Iterable[str], key: str) -> int:
    return sum(text.count(key) for text in texts)
