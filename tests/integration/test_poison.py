"""A message that cannot be rendered must not wedge its destination (issue 10, item 1).

Accept now refuses such messages (400), so the poison is written straight into the node's
spool before the node starts, as if an older version had accepted it: the delivery side
must settle each one (a block with a clear reason), free its window slot, count it, and
keep delivering everything else to the same destination.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from tests.conftest import SpoolSnapshot, call, simple_mail, spool_snapshot

from postline.accept.expand import expand
from postline.backends.sqlite.spool import open_sqlite_spool
from postline.config import SpoolConfig
from postline.model.mail import (
    Attachment,
    Content,
    EmailAddress,
    MailSendRequest,
    Personalization,
)
from postline.spool.interface import AcceptBatch
from postline.testing.fake_smtp import FakeSmtpServer

POISON = 1000
GOOD = 40
CORRUPT = 3
LOGO = "aGk="  # base64 of "hi"


def delivery_config(port: int) -> dict[str, Any]:
    return {
        "delivery": {
            "routes": {"*": f"127.0.0.1:{port}"},
            "window": 10,
            "retry_min": "300ms",
            "retry_max": "1s",
            "max_age": "1h",
            "shaping": {"connect_timeout": "2s", "command_timeout": "2s", "data_timeout": "2s"},
        }
    }


def poison_request(n: int) -> MailSendRequest:
    """``n`` personalizations whose inline attachment has a non-ASCII content_id."""
    cids = ["logo-é", "logo\u2028x"]
    return MailSendRequest(
        personalizations=[
            Personalization(to=[EmailAddress(f"poison{i}@example.com")]) for i in range(n)
        ],
        from_=EmailAddress("alice@example.com"),
        subject="poison",
        content=[Content("text/html", '<img src="cid:logo-é">')],
        attachments=[
            Attachment(LOGO, "logo.png", "image/png", "inline", cids[0]),
            Attachment(LOGO, "l2.png", "image/png", "inline", cids[1]),
        ],
    )


def stored_batch(req: MailSendRequest, x_id: str) -> AcceptBatch:
    now = time.time()
    return expand(
        req, tenant="default", node="n", host="h", now=now, max_age=3600.0, x_message_id=x_id
    )


def corrupt_batch() -> AcceptBatch:
    """Messages whose stored body is not the msgpack of a MailBody at all."""
    req = MailSendRequest(
        personalizations=[
            Personalization(to=[EmailAddress(f"corrupt{i}@example.com")]) for i in range(CORRUPT)
        ]
    )
    batch = stored_batch(req, "CORRUPT")
    batch.body = b"\xc1 not msgpack"
    return batch


def write_to_spool(data_dir: Path, *batches: AcceptBatch) -> None:
    async def run() -> None:
        spool = await open_sqlite_spool(str(data_dir), SpoolConfig())
        try:
            for batch in batches:
                await spool.accept(batch)
        finally:
            await spool.close()

    asyncio.run(run())


def wait_for(node: Any, done: Any, timeout: float) -> SpoolSnapshot:
    deadline = time.monotonic() + timeout
    while True:
        snap = spool_snapshot(node.data_dir)
        if done(snap) or time.monotonic() > deadline:
            return snap
        time.sleep(0.2)


def metric(node: Any, name: str) -> float:
    text = call(node.http_port, "GET", "/metrics").body.decode()
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key in (f"postline_{name}", f"postline_{name}_total"):  # plain or Prometheus style
            return float(value)
    raise AssertionError(f"no metric {name} in {text}")


def test_poison_messages_are_bounced_and_the_destination_keeps_flowing(
    node_factory: Any, fake_mx: FakeSmtpServer
) -> None:
    node = node_factory(delivery_config(fake_mx.port))
    write_to_spool(node.data_dir, stored_batch(poison_request(POISON), "POISON"), corrupt_batch())
    node.start()
    key = node.create_key()
    for i in range(GOOD):
        r = call(
            node.http_port, "POST", "/v3/mail/send", simple_mail(f"good{i}@example.com"), key=key
        )
        assert r.status == 202, r.body

    def settled(s: SpoolSnapshot) -> bool:
        return len(s.of_type("delivered")) == GOOD and len(s.of_type("bounce")) == POISON + CORRUPT

    snap = wait_for(node, settled, timeout=90)
    delivered = {e["email"] for e in snap.of_type("delivered")}
    assert delivered == {f"good{i}@example.com" for i in range(GOOD)}, node.log_tail()
    bounces = snap.of_type("bounce")
    assert len(bounces) == POISON + CORRUPT
    for bounce in bounces:
        assert bounce["type"] == "blocked" and bounce["bounce_classification"] == "Content"
        assert bounce["status"] == "5.6.0"
        assert bounce["reason"].startswith("550 5.6.0 message could not be rendered: ")
    poison = [b for b in bounces if b["email"].startswith("poison")]
    assert len(poison) == POISON
    assert all("RenderError: an attachment content_id is not ASCII" in b["reason"] for b in poison)
    corrupt = [b for b in bounces if b["email"].startswith("corrupt")]
    assert len(corrupt) == CORRUPT and all("DecodeError" in b["reason"] for b in corrupt)
    assert snap.queued == 0
    assert not any(t.rcpts[0].startswith(("poison", "corrupt")) for t in fake_mx.transactions)
    assert metric(node, "job_errors") == POISON + CORRUPT
    assert metric(node, "inflight_deliveries") == 0


def test_a_content_id_that_cannot_be_rendered_is_refused_at_accept(accept_node: Any) -> None:
    key = accept_node.create_key()
    for cid in ("logo-é", "logo\u2028", "logo image", "<logo>", "x" * 1000):
        att = {"content": LOGO, "filename": "logo.png", "disposition": "inline", "content_id": cid}
        r = call(
            accept_node.http_port, "POST", "/v3/mail/send", simple_mail(attachments=[att]), key=key
        )
        assert r.status == 400, (cid, r.body)
        fields = [e["field"] for e in r.json()["errors"]]
        assert fields == ["attachments.0.content_id"], (cid, r.json())
    snap = spool_snapshot(accept_node.data_dir)
    assert snap.messages == 0 and snap.events == []
