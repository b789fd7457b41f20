"""API keys: SendGrid's ``SG.<id>.<secret>`` shape, stored hashed, scoped, per tenant.

A key is shown once, at creation. The store keeps ``sha256(key)``: keys carry 256 bits of
randomness, so a fast hash is as safe as a slow one and keeps auth off the profile.
Scopes use SendGrid's names; a key created without ``--scopes`` gets :data:`FULL_ACCESS`.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from typing import Protocol

# SendGrid scope names for what Postline serves (and will serve); "full access" is all of them.
FULL_ACCESS: frozenset[str] = frozenset(
    {
        "mail.send",
        "mail.batch.create",
        "mail.batch.read",
        "mail.batch.update",
        "mail.batch.delete",
        "user.scheduled_sends.create",
        "user.scheduled_sends.read",
        "user.scheduled_sends.update",
        "user.scheduled_sends.delete",
        "suppression.create",
        "suppression.read",
        "suppression.update",
        "suppression.delete",
        "suppression.bounces.create",
        "suppression.bounces.read",
        "suppression.bounces.update",
        "suppression.bounces.delete",
        "suppression.blocks.create",
        "suppression.blocks.read",
        "suppression.blocks.update",
        "suppression.blocks.delete",
        "suppression.spam_reports.create",
        "suppression.spam_reports.read",
        "suppression.spam_reports.update",
        "suppression.spam_reports.delete",
        "suppression.invalid_emails.create",
        "suppression.invalid_emails.read",
        "suppression.invalid_emails.update",
        "suppression.invalid_emails.delete",
        "suppression.unsubscribes.create",
        "suppression.unsubscribes.read",
        "suppression.unsubscribes.update",
        "suppression.unsubscribes.delete",
        "asm.groups.create",
        "asm.groups.read",
        "asm.groups.update",
        "asm.groups.delete",
        "asm.groups.suppressions.create",
        "asm.groups.suppressions.read",
        "asm.groups.suppressions.update",
        "asm.groups.suppressions.delete",
        "asm.suppressions.global.create",
        "asm.suppressions.global.read",
        "asm.suppressions.global.update",
        "asm.suppressions.global.delete",
        "stats.read",
        "stats.global.read",
        "categories.stats.read",
        "categories.stats.sums.read",
        "email_activity.read",
        "messages.read",
        "user.webhooks.event.settings.create",
        "user.webhooks.event.settings.read",
        "user.webhooks.event.settings.update",
        "user.webhooks.event.settings.delete",
        "user.webhooks.event.test.create",
        "user.webhooks.event.test.read",
        "user.webhooks.event.test.update",
        "api_keys.create",
        "api_keys.read",
        "api_keys.update",
        "api_keys.delete",
        "scopes.read",
    }
)


class KeyError_(Exception):
    """A key operation cannot be done (unknown scope, unknown key)."""


def expand_scopes(spec: str | None) -> frozenset[str]:
    """``None`` → full access; ``"mail.send,suppression.*"`` → those scopes (``*`` expands)."""
    if spec is None:
        return FULL_ACCESS
    out: set[str] = set()
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if item.endswith(".*"):
            matched = {s for s in FULL_ACCESS if s.startswith(item[:-1])}
            if not matched:
                raise KeyError_(f"unknown scope pattern {item!r}")
            out |= matched
        elif item in FULL_ACCESS:
            out.add(item)
        else:
            raise KeyError_(
                f"unknown scope {item!r}; known scopes: {', '.join(sorted(FULL_ACCESS))}"
            )
    if not out:
        raise KeyError_("no scopes given")
    return frozenset(out)


def _b64(n: int) -> str:
    return base64.urlsafe_b64encode(os.urandom(n)).rstrip(b"=").decode("ascii")


def generate() -> tuple[str, str]:
    """A new key and its public id: ``("SG.<id>.<secret>", "<id>")``."""
    key_id = _b64(16)
    return f"SG.{key_id}.{_b64(32)}", key_id


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    name: str
    tenant: str
    scopes: frozenset[str]
    created: float
    revoked: bool = False


class KeyStore(Protocol):
    def create(self, name: str, tenant: str, scopes: frozenset[str]) -> tuple[str, ApiKey]: ...

    def list(self, tenant: str | None = None) -> list[ApiKey]: ...

    def revoke(self, key_id: str) -> bool: ...

    def lookup(self, key: str) -> ApiKey | None:
        """The live (not revoked) key matching ``key``, else None."""
        ...
