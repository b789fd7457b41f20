"""Nothing acknowledged is lost: kill -9 under load; a full disk answers 503, not 202."""

from __future__ import annotations

import http.client
import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import call, simple_mail, spool_snapshot


def _sender(port: int, key: str, acked: list[str], stop: threading.Event) -> None:
    body = json.dumps(simple_mail()).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        while not stop.is_set():
            conn.request("POST", "/v3/mail/send", body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status == 202:
                acked.append(resp.getheader("X-Message-Id") or "")
    except (OSError, http.client.HTTPException):
        return  # the node died: whatever was not answered was not acknowledged
    finally:
        conn.close()


def test_kill_9_while_clients_send_loses_no_acknowledged_request(node_factory: Any) -> None:
    node = node_factory({"delivery": {"enabled": False}}).start()
    key = node.create_key()
    acked: list[str] = []
    stop = threading.Event()
    threads = [
        threading.Thread(target=_sender, args=(node.http_port, key, acked, stop)) for _ in range(8)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(acked) < 2000 and time.monotonic() < deadline:
        time.sleep(0.05)
    node.kill()  # SIGKILL while the senders are mid-flight
    stop.set()
    for t in threads:
        t.join(10)
    assert len(acked) >= 2000
    node.start()  # restart on the same data: recovery must not lose anything either
    node.stop()
    snap = spool_snapshot(node.data_dir)
    stored = {e["sg_message_id"].split(".", 1)[0] for e in snap.of_type("processed")}
    missing = [x for x in acked if x not in stored]
    assert missing == []
    assert snap.messages >= len(acked)


def test_min_free_space_turns_into_503(node_factory: Any) -> None:
    node = node_factory(
        {"delivery": {"enabled": False}, "spool": {"min_free_bytes": 10**18}}
    ).start()
    key = node.create_key()
    r = call(node.http_port, "POST", "/v3/mail/send", simple_mail(), key=key)
    assert r.status == 503
    assert int(r.headers["retry-after"]) > 0
    assert "errors" in r.json()
    assert call(node.http_port, "GET", "/healthz").status == 503
    assert spool_snapshot(node.data_dir).messages == 0


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Any:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {res.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_answers_503_and_recovers(node_factory: Any, tiny_fs: Path) -> None:
    node = node_factory(
        {
            "data_dir": str(tiny_fs / "data"),
            "delivery": {"enabled": False},
            "spool": {"min_free_bytes": 0, "reserve_bytes": 0},
        }
    )
    node.data_dir = tiny_fs / "data"
    node.start()
    key = node.create_key()
    assert call(node.http_port, "POST", "/v3/mail/send", simple_mail(), key=key).status == 202
    filler = tiny_fs / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass
    big = simple_mail(content=[{"type": "text/plain", "value": "x" * 200_000}])
    statuses = {
        call(node.http_port, "POST", "/v3/mail/send", big, key=key).status for _ in range(5)
    }
    assert statuses == {503}
    filler.unlink()
    assert call(node.http_port, "POST", "/v3/mail/send", simple_mail(), key=key).status == 202
    node.stop()
    assert spool_snapshot(node.data_dir).messages == 2
