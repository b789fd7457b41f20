"""The README's examples, run as written: a newcomer pastes them and they work.

The Quick start runs in a copy of the repository (the same files, the same .venv) so that
its ``./postline-data`` and ``reply.txt`` land in a temporary directory; it uses the fixed
ports the README names (8025 and 2526), so the test first checks they are free.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from postline.config import from_dict

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def blocks(section: str, lang: str) -> list[str]:
    """Code blocks of one language in a ``## section`` of the README."""
    start = README.index(f"## {section}\n")
    end = README.find("\n## ", start + 1)
    text = README[start : end if end > 0 else None]
    return re.findall(rf"```{lang}\n(.*?)```", text, re.DOTALL)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def copy_repo(dest: Path) -> None:
    """The tracked and untracked-but-not-ignored files, and this checkout's .venv."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    # The copy shares this checkout's .venv: its set-up must never reinstall (that would
    # point the editable install at the copy), so its pins are made older than any stamp.
    for pins in ("pyproject.toml", "constraints.txt"):
        os.utime(dest / pins, (0, 0))
    (dest / ".venv").symlink_to(ROOT / ".venv")


def test_first_lines_are_the_two_commands() -> None:
    first = re.search(r"```sh\n(.*?)```", README, re.DOTALL)
    assert first is not None
    lines = [ln.split("#")[0].strip() for ln in first.group(1).splitlines()]
    assert lines == ["bash scripts/serve", "bash scripts/test"]


def test_configuration_example_loads() -> None:
    (example,) = blocks("Configuration", "toml")
    cfg = from_dict(tomllib.loads(example), "README")
    assert cfg.delivery.routes == {"*": "127.0.0.1:2526"}


@pytest.mark.timeout(240)
def test_quick_start_as_written(tmp_path: Path) -> None:
    if not all(port_free(p) for p in (8025, 2525, 2526, 9099)):
        pytest.fail("ports 8025, 2525, 2526, 9099 must be free for the Quick start (a node?)")
    quick, client = blocks("Quick start", "sh")
    (relay,) = blocks("SMTP relay", "sh")
    (events,) = blocks("Events: webhooks, activity search, statistics", "sh")
    copy_repo(tmp_path)
    script = quick + "\n" + client + "\n" + relay + "\n" + events
    log = tmp_path / "output.txt"
    with log.open("wb") as sink:  # a file, not a pipe: the node and the sink outlive bash
        proc = subprocess.Popen(
            ["bash", "-c", script],
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
        )
    try:
        proc.wait(timeout=180)
        time.sleep(1.0)  # the sink prints the Python client's message a moment later
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
    text = log.read_text()
    sys.stdout.write(text)
    assert proc.returncode == 0, text
    assert "setup: installing" not in text  # set-up again is a no-op
    assert "HTTP/1.1 202 Accepted" in text
    # The envelope sender is the message's VERP return path on the From domain ([bounces]).
    verp = r"received from=<bounces\+[a-z2-7]{42}@example\.com> to=<bob@example\.com>"
    assert re.search(verp, text), "the sink should print the VERP envelope sender"
    # curl, the Python client and the SMTP relay example each delivered one message.
    assert len(re.findall(verp, text)) == 3, "three messages should reach the sink"
    assert re.search(r"\bdelivered\b", text), "messages show should say the mail was delivered"
    assert re.search(r"^202 \S+$", text, re.MULTILINE), "the Python client prints 202 and an id"
    # The Events block: the webhook got carol's events, the search and the stats found them.
    assert re.search(r"webhook got processed carol@example\.com", text), "webhook: processed"
    assert re.search(r"webhook got delivered carol@example\.com", text), "webhook: delivered"
    assert "bob@example.com" not in re.findall(r"webhook got \w+ (\S+)", text)  # before it
    assert re.search(r'"to_email": ?"carol@example\.com"', text), "GET /v3/messages finds it"
    assert re.search(r'"name": ?"demo"', text) and re.search(r'"delivered": ?1\b', text)
    assert "result      OK" in text, "postline audit passes"


def test_every_benchmark_command_in_the_readme_runs() -> None:
    """The Benchmarks section's commands exist as written (``--help``: the runs themselves
    take minutes and are not tests)."""
    section = README[README.index("## Benchmarks\n") :]
    commands = re.findall(r"`(\.venv/bin/(?:postline bench \w+|python -m bench\.\w+))", section)
    assert len(commands) >= 6, commands
    for command in commands:
        done = subprocess.run(
            [*command.split(), "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, (command, done.stderr)
        assert "usage:" in done.stdout


def test_keys_create_says_which_data_dir_when_no_node_used_it(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(ROOT / ".venv/bin/postline"), "keys", "create", "--name", "x"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0
    assert f"using data_dir {tmp_path / 'postline-data'}" in done.stderr
    assert done.stdout.splitlines()[-1].startswith("SG.")
