"""connect.logged_errors: nats-py's connection errors logged once per ERROR_LOG_EVERY per
distinct error, not one traceback per try (a node waiting 90 s for a NATS that was down
wrote 180 tracebacks)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from postline.backends.jetstream.connect import ERROR_LOG_EVERY, logged_errors


def test_the_same_error_is_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    cb = logged_errors(["nats://a:4222"], clock=lambda: now[0])

    async def tries() -> None:
        for _ in range(50):  # a burst of reconnect failures
            await cb(ConnectionRefusedError(111, "Connection refused"))
            now[0] += 0.1
        await cb(TimeoutError())  # another error: logged at once
        now[0] += ERROR_LOG_EVERY
        await cb(ConnectionRefusedError(111, "Connection refused"))  # the interval passed

    with caplog.at_level(logging.WARNING, logger="postline.nats"):
        asyncio.run(tries())
    errors = [r.__dict__["error"] for r in caplog.records]
    assert errors == [
        "[Errno 111] Connection refused",
        "TimeoutError",
        "[Errno 111] Connection refused",
    ]
    assert all(r.__dict__["servers"] == ["nats://a:4222"] for r in caplog.records)
    assert not any(r.exc_info for r in caplog.records)  # no traceback
