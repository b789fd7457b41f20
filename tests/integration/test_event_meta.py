"""Accept-time events carry the message's from and subject for the activity store (never
posted to webhooks), through HTTP and the relay; an older spool file gains the column."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

from tests.conftest import call, simple_mail
from tests.integration.test_smtp_relay import client, message, relay_config

from postline.backends.sqlite import schema
from postline.backends.sqlite.spool import open_sqlite_spool
from postline.config import SpoolConfig
from postline.model.events import PROCESSED, make_event, message_meta
from postline.spool.interface import AcceptBatch
from postline.testing.fake_smtp import FakeSmtpServer


def metas(data_dir: Path) -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    with sqlite3.connect(data_dir / "spool.db") as conn:
        rows = conn.execute("SELECT event, email, data, meta FROM events ORDER BY offset")
        return [(e, m, json.loads(d), json.loads(x) if x else {}) for e, m, d, x in rows]


def test_http_and_relay_events_carry_from_and_subject(
    node_factory: Any, fake_mx: FakeSmtpServer
) -> None:
    node = node_factory(relay_config(fake_mx.port)).start()
    key = node.create_key()
    mail = simple_mail("bob@example.com", subject="Invoice 7")
    reply = call(node.http_port, "POST", "/v3/mail/send", mail, key=key)
    assert reply.status == 202, reply.body
    with client(node, key) as smtp:
        smtp.send_message(message("carol@example.com"))
    rows = [r for r in metas(node.data_dir) if r[0] == PROCESSED]
    by_rcpt = {email: (data, meta) for _, email, data, meta in rows}
    data, meta = by_rcpt["bob@example.com"]
    assert meta == {"from_email": mail["from"]["email"], "subject": "Invoice 7"}
    assert "subject" not in data and "from_email" not in data  # the webhook object is SendGrid's
    _, relayed = by_rcpt["carol@example.com"]
    assert relayed == {"from_email": "ana@sender.example", "subject": "Relayed"}


def test_version_1_spool_gains_the_meta_column(tmp_path: Path) -> None:
    db = tmp_path / "spool.db"
    old_ddl = schema.DDL.replace(",\n  meta BLOB NOT NULL DEFAULT x''", "")
    old_ddl = old_ddl.replace("     -- EventRecord.meta (activity-only fields)", "")
    assert "meta" not in old_ddl
    with sqlite3.connect(db) as conn:
        conn.executescript(old_ddl)
        conn.execute(
            "INSERT INTO events (ts, tenant, event, email, sg_message_id, data)"
            " VALUES (1, 't1', 'processed', 'a@d.example', 'm.pl1.0', '{}')"
        )
        conn.execute("PRAGMA user_version=1")

    async def main() -> None:
        spool = await open_sqlite_spool(str(tmp_path), SpoolConfig(min_free_bytes=0))
        try:
            ((off, old),) = await spool.read(0, 10)
            assert old.meta == b""
            new = make_event(
                PROCESSED,
                tenant="t1",
                email="b@d.example",
                ts=2.0,
                sg_message_id="n.pl1.0",
                smtp_id="",
                meta=message_meta("f@x", "s"),
            )
            await spool.accept(AcceptBatch("t1", b"", [], [new], 2.0, 3.0))
            assert [rec for _, rec in await spool.read(off, 10)] == [new]
        finally:
            await spool.close()

    asyncio.run(main())
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.VERSION
