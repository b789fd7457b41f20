"""/v3/mail/send when the suppression lookup cannot read its store (cluster mode:
PostgreSQL down): 503 with Retry-After, nothing accepted — not a 500."""

from __future__ import annotations

import asyncio
import json

import pytest
from tests.conftest import simple_mail

from postline.api.errors import HttpError
from postline.api.mail_send import MailSend
from postline.api.types import Request
from postline.spool.interface import AcceptBatch, SpoolUnavailable


def test_suppression_store_down_is_503() -> None:
    accepted: list[AcceptBatch] = []

    async def accept(batch: AcceptBatch) -> None:
        accepted.append(batch)

    async def suppressed(tenant: str, emails: object, groups: object) -> dict[str, str]:
        raise SpoolUnavailable("suppression store unreachable", retry_after=7)

    door = MailSend(accept=accept, suppressed=suppressed, node="n", host="h.example",
                    max_age=3600.0, max_body=1 << 20)  # fmt: skip
    req = Request("POST", "/v3/mail/send", "", {"content-type": "application/json"},
                  json.dumps(simple_mail()).encode())  # fmt: skip
    with pytest.raises(HttpError) as err:
        asyncio.run(door(req))
    assert err.value.status == 503, err.value
    assert ("Retry-After", "7") in err.value.headers
    assert accepted == []
