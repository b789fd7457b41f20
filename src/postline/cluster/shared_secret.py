"""Secrets every node of a cluster must share: the VERP key (deliver/verp.py).

A bounce comes back to ``bounces+<token>@...`` and is read by ``postline inbound`` on
whichever machine the bounce domain's MX leads to: the token must verify there, so the
HMAC key that made it is the cluster's, not a node's. ``[bounces] secret`` in the config
wins; without it the first node (or ``postline inbound``) to ask generates one into the
PostgreSQL table ``settings`` (migration 5) and every other reads that one. Several
datacenters with a database each must set ``[bounces] secret`` (the same everywhere), or
a bounce read in one datacenter for mail sent by the other does not verify.
"""

from __future__ import annotations

import secrets

from postline.backends.postgres.conn import connect
from postline.backends.postgres.migrate import migrate_dsn
from postline.config import Config

BOUNCE_KEY = "bounce_key"

_CLAIM = "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING"
_READ = "SELECT value FROM settings WHERE name = $1"


async def shared_value(dsn: str, name: str, proposal: str, *, migrate: bool = True) -> str:
    """The cluster's value of ``name``: ``proposal`` if nobody chose one before.
    ``migrate``: make the schema first (a command may run before any node did)."""
    if migrate:
        await migrate_dsn(dsn)
    conn = await connect(dsn)
    try:
        await conn.execute(_CLAIM, name, proposal)
        value: str = await conn.fetchval(_READ, name)
        return value
    finally:
        await conn.close()


async def bounce_key(cfg: Config, *, migrate: bool = True) -> bytes:
    """The VERP key of a cluster node or of ``postline inbound`` in cluster mode."""
    assert cfg.cluster is not None
    if cfg.bounces.secret:
        return cfg.bounces.secret.encode()
    proposal = secrets.token_hex(32)
    value = await shared_value(cfg.cluster.postgres, BOUNCE_KEY, proposal, migrate=migrate)
    return value.encode()
