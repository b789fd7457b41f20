"""``postline inbound`` in cluster mode: verify with the cluster's VERP key and tenants,
record into the cluster (suppressions in PostgreSQL, events on the JetStream event log),
so a late bounce or a complaint reaches every node's lists, activity, stats and webhooks
whichever machine's MTA received it. The order is the spool's (backends/jetstream/
lists.py): the lists first, then the events; a failure part-way exits 75 and the MTA
delivers the message again (the lists' upsert and the event's content id make that
harmless).
"""

from __future__ import annotations

import time

from postline.backends.postgres.conn import connect
from postline.backends.postgres.suppressions import PostgresSuppressions
from postline.cluster.backends import open_event_log
from postline.cluster.shared_secret import bounce_key
from postline.config import Config
from postline.deliver.verp import ReturnPath
from postline.inbound import ingest
from postline.inbound.ingest import Decision


async def decide_and_record(cfg: Config, raw: bytes, envelope: list[str]) -> Decision:
    assert cfg.cluster is not None
    dsn = cfg.cluster.postgres
    return_path = ReturnPath(await bounce_key(cfg), cfg.bounces.domain)
    verify = return_path.verify_for(await tenants(dsn), [cfg.http.node_name])
    decision = ingest.decide(raw, envelope, verify, time.time())
    if decision.suppressions:
        lists = await PostgresSuppressions.open(dsn, migrate=False)  # bounce_key did
        try:
            await lists.add(decision.suppressions)
        finally:
            await lists.close()
    if decision.events:
        log = await open_event_log(cfg)
        try:
            await log.events.append(decision.events)
        finally:
            await log.close()
    return decision


async def tenants(dsn: str) -> list[str]:
    """Every tenant that ever had a key in the cluster (revoked ones too: their mail
    still bounces)."""
    conn = await connect(dsn)
    try:
        rows = await conn.fetch("SELECT DISTINCT tenant FROM api_keys")
    finally:
        await conn.close()
    return sorted({r[0] for r in rows} | {"default"})
