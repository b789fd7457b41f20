"""The command line: keys, config errors, clean stop on signals."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import call, simple_mail

from postline.testing.node import postline_cmd

KEY_RE = re.compile(r"^SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}$")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(postline_cmd(*args), capture_output=True, text=True, timeout=60)


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "postline.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n' + text)
    return path


def test_keys_create_prints_key_last_and_stores_only_a_hash(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "")
    out = _run("keys", "create", "--name", "ci", "--scopes", "mail.send", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip().splitlines()[-1]
    assert KEY_RE.match(key)
    stored = b"".join(p.read_bytes() for p in (tmp_path / "data").glob("keys.db*"))
    assert key.encode() not in stored
    assert key.split(".")[2].encode() not in stored
    listing = _run("keys", "list", "--config", str(cfg))
    assert listing.returncode == 0
    assert key.split(".")[1] in listing.stdout and key not in listing.stdout
    assert "mail.send" in listing.stdout


def test_keys_unknown_scope_is_an_error(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "")
    out = _run("keys", "create", "--name", "x", "--scopes", "mail.sned", "--config", str(cfg))
    assert out.returncode == 2
    assert "mail.sned" in out.stderr


def test_keys_revoke_unknown_id_fails(tmp_path: Path) -> None:
    out = _run("keys", "revoke", "nope", "--config", str(_config(tmp_path, "")))
    assert out.returncode == 1 and "nope" in out.stderr


def test_unknown_config_key_stops_start_naming_key_and_file(tmp_path: Path) -> None:
    cfg = _config(tmp_path, '[delivery]\nretry_mni = "5m"\n')
    out = _run("serve", "--config", str(cfg))
    assert out.returncode == 2
    assert "delivery.retry_mni" in out.stderr and str(cfg) in out.stderr


def test_mistyped_config_value_stops_start(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "[delivery]\nmax_age = 72\n")
    out = _run("serve", "--config", str(cfg))
    assert out.returncode == 2
    assert "delivery.max_age" in out.stderr


def test_help_explains_commands() -> None:
    out = _run("--help")
    assert out.returncode == 0
    for word in ("serve", "keys", "bench"):
        assert word in out.stdout


def test_sigterm_and_sigint_stop_cleanly(node_factory: Any) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        node = node_factory(
            {"delivery": {"enabled": False}, "log": {"level": "info"}}, name=f"n{sig}"
        ).start()
        key = node.create_key()
        assert call(node.http_port, "POST", "/v3/mail/send", simple_mail(), key=key).status == 202
        assert node.stop(sig) == 0
        assert '"stopped"' in node.log_tail()
