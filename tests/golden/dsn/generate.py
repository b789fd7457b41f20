"""Regenerate the real Postfix DSNs of this folder (needs root and Debian's postfix).

    PYTHONPATH=. .venv/bin/python tests/golden/dsn/generate.py

A private Postfix instance (bench/postfix_peer.py) relays a message to the fake MX
(postline.testing.fake_smtp), which refuses its recipients by their local part; Postfix's
bounce daemon then sends its DSN to the envelope sender, through the same relay, where it
is saved. Each file keeps the envelope sender of RETURN_PATH below.
"""

from __future__ import annotations

import smtplib
import subprocess
import time
from pathlib import Path

from bench.postfix_peer import private_instance

from postline.testing.fake_smtp import FakeSmtpServer, running_in_thread

HERE = Path(__file__).parent
RETURN_PATH = "bounces+kw66sg2mt5hwtgdpneveg3ew2qaaaxklbgsvzroula@bounces.example.com"
MESSAGE = (
    b"From: Sender <sender@example.com>\r\nTo: gone@example.net\r\nSubject: Hello\r\n"
    b"Message-ID: <Vb3pG0yfT2mYb2kqQ2yW1A.0@pl1.example.com>\r\n"
    b"Date: Fri, 27 Nov 2026 12:00:00 +0000\r\n\r\nHi\r\n"
)
# file -> (recipients, main.cf settings)
SAMPLES: dict[str, tuple[list[str], list[str]]] = {
    "postfix-remote-550.eml": (["550-gone@example.net"], []),
    "postfix-two-recipients.eml": (["550-gone@example.net", "552-full@example.net"], []),
    # one attempt only: a 4xx reply is returned at once, "Action: failed" with a 4.x.x status
    "postfix-gave-up-450.eml": (
        ["450-busy@example.net"],
        ["maximal_queue_lifetime=0", "bounce_queue_lifetime=0"],
    ),
}


def dsn_from_postfix(
    mx: FakeSmtpServer, sender: str, rcpts: list[str], settings: list[str]
) -> bytes:
    """The DSN a private Postfix sends to ``sender`` for ``rcpts`` refused by ``mx``."""
    with private_instance(mx.port) as pf:
        if settings:
            subprocess.run(["postconf", "-c", str(pf.conf), "-e", *settings], check=True)
            subprocess.run(["postfix", "-c", str(pf.conf), "reload"], check=True)
            time.sleep(1)
        with smtplib.SMTP("127.0.0.1", pf.port) as s:
            s.sendmail(sender, rcpts, MESSAGE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for t in mx.transactions:
                if t.mail_from == "" and sender in t.rcpts:
                    return t.data
            time.sleep(0.2)
        raise RuntimeError(f"no DSN from Postfix; maillog:\n{pf.maillog()[-3000:]}")


def main() -> None:
    for name, (rcpts, settings) in SAMPLES.items():
        with running_in_thread(FakeSmtpServer()) as mx:
            (HERE / name).write_bytes(dsn_from_postfix(mx, RETURN_PATH, rcpts, settings))
        print("wrote", name)


if __name__ == "__main__":
    main()
