"""End to end: kill -9 in the middle of delivery loses nothing.

A node delivers 2000 accepted messages to the fake MTA at a shaped rate; it is killed with
SIGKILL while sessions are busy, restarted on the same data dir, and must then deliver
every recipient it had not recorded as delivered. Deliveries that reached the MTA but whose
outcome was not yet committed are sent again (at-least-once); nothing is recorded twice.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from tests.conftest import spool_snapshot
from tests.integration.test_delivery import fast_config, send, wait_for

from postline.testing.fake_smtp import FakeSmtpServer, running_in_thread

MESSAGES = 2000
WINDOW = 200  # deliveries in memory per site: bounds what can be in flight at the kill


def test_kill_9_mid_delivery_loses_nothing(node_factory: Any) -> None:
    with running_in_thread(FakeSmtpServer()) as fake:
        shaping = {
            "max_message_rate": 400.0,  # keeps the deliveries going for a few seconds
            "connect_timeout": "2s",
            "command_timeout": "1s",
            "data_timeout": "2s",
        }
        node = node_factory(fast_config(fake.port, window=WINDOW, shaping=shaping)).start()
        key = node.create_key()
        rcpts = [f"user{i}@example.com" for i in range(MESSAGES)]
        for i in range(0, MESSAGES, 100):
            send(node, key, *rcpts[i : i + 100])  # 202: every one of them is durable

        deadline = time.monotonic() + 20
        while len(fake.transactions) < 300 and time.monotonic() < deadline:
            time.sleep(0.01)
        node.kill()  # SIGKILL: no release of leases, no final settle
        at_kill = len(fake.transactions)
        assert 300 <= at_kill < MESSAGES, (at_kill, node.log_tail())

        before = spool_snapshot(node.data_dir)
        recorded = {e["email"] for e in before.of_type("delivered")}
        assert 0 < len(recorded) < MESSAGES
        assert before.queued == MESSAGES - len(recorded)  # leased rows are still there
        assert recorded <= set(rcpts_at(fake))

        node.start()  # same data dir: leased deliveries are due again
        snap = wait_for(node, lambda s: len(s.of_type("delivered")) >= MESSAGES, timeout=30)
        snap = spool_snapshot(node.data_dir)  # counts read after the events seen above
        delivered = Counter(e["email"] for e in snap.of_type("delivered"))
        assert set(delivered) == set(rcpts), node.log_tail()
        assert max(delivered.values()) == 1  # each outcome recorded exactly once
        assert snap.of_type("bounce") == [] and snap.of_type("deferred") == []
        assert snap.queued == 0 and snap.messages == 0 and snap.bodies == 0

        got = Counter(rcpts_at(fake))
        assert set(got) == set(rcpts)  # every recipient reached the destination
        duplicates = sum(got.values()) - MESSAGES
        # Only deliveries in flight at the kill (at most the window) can go out twice.
        assert 0 <= duplicates <= WINDOW, duplicates


def rcpts_at(fake: FakeSmtpServer) -> list[str]:
    return [r for t in list(fake.transactions) for r in t.rcpts]
