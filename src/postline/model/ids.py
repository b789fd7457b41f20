"""Identifiers in SendGrid's shapes.

* ``X-Message-Id``: 22 characters of base64url (16 random bytes), one per request.
* ``sg_message_id``: ``<X-Message-Id>.<node>.<personalization index>``; SendGrid's own ids
  start with the X-Message-Id and end with the personalization index too, which is what
  client code relies on (sendgrid-python #558).
* ``smtp-id``: the ``Message-ID`` header value, ``<X-Message-Id.index@host>``, or the
  sender's own ``Message-ID`` header when the request set one (accept/expand.py).
* ``sg_event_id``: 22 characters of base64url, unique per event (webhook receivers dedupe on it).
"""

from __future__ import annotations

import base64
import random

# Ids need uniqueness, not secrecy: 128 bits from a generator seeded from the OS. Not
# os.urandom per id: it is a system call that releases the GIL, and on the accept and
# delivery paths the spool's writer thread then takes it (py-spy: 4.4% of the node's
# samples in _token under `postline bench e2e`).
_bits = random.Random(random.SystemRandom().getrandbits(256)).getrandbits


def _token() -> str:
    return base64.urlsafe_b64encode(_bits(128).to_bytes(16, "big")).rstrip(b"=").decode("ascii")


def new_x_message_id() -> str:
    return _token()


def new_event_id() -> str:
    return _token()


def sg_message_id(x_message_id: str, node: str, index: int) -> str:
    return f"{x_message_id}.{node}.{index}"


def smtp_id(x_message_id: str, index: int, host: str) -> str:
    return f"<{x_message_id}.{index}@{host}>"


def x_message_id_of(sg_id: str) -> str:
    """The request-level id that prefixes a ``sg_message_id``."""
    return sg_id.split(".", 1)[0]
