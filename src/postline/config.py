"""Configuration: one typed tree, each setting declared once with its default.

The file is TOML. Every key has a default (a node runs with no file at all); an unknown or
mistyped key stops the start with a message naming the key and the file. Durations are
strings with a unit (``"500ms"``, ``"30s"``, ``"5m"``, ``"72h"``, ``"3d"``); nothing below
assumes a floor of its own under a configured value (tests use ``retry_min = "1s"``).

The tree is split by job: the vocabulary (errors, durations, the section base) in
config_types.py, value checks in config_checks.py, the single-node sections in
config_sections.py, ``[cluster]`` in config_cluster.py; this module holds the root and reads
the file. Every name stays importable from here.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import msgspec
from msgspec import Struct, field

from postline.config_cluster import ClusterConfig
from postline.config_sections import (
    ActivityConfig,
    BouncesConfig,
    DeliveryConfig,
    DkimKey,
    DnsConfig,
    EventsConfig,
    HttpConfig,
    LogConfig,
    ShapingConfig,
    SmtpConfig,
    SpoolConfig,
    StatsConfig,
    WebhooksConfig,
)
from postline.config_types import ConfigError, Duration, Section, dec_hook

__all__ = [
    "ActivityConfig",
    "BouncesConfig",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "DeliveryConfig",
    "DkimKey",
    "DnsConfig",
    "Duration",
    "EventsConfig",
    "HttpConfig",
    "LogConfig",
    "ShapingConfig",
    "SmtpConfig",
    "SpoolConfig",
    "StatsConfig",
    "WebhooksConfig",
    "from_dict",
    "load",
    "to_dict",
]


class Config(Section):
    data_dir: str = "./postline-data"
    http: HttpConfig = field(default_factory=HttpConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    activity: ActivityConfig = field(default_factory=ActivityConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    log: LogConfig = field(default_factory=LogConfig)
    bounces: BouncesConfig = field(default_factory=BouncesConfig)
    cluster: ClusterConfig | None = None  # absent: the embedded single-node default

    @property
    def clustered(self) -> bool:
        """True when ``[cluster]`` names NATS and PostgreSQL (cluster mode)."""
        return self.cluster is not None and self.cluster.enabled

    def shaping_for(self, domain: str) -> ShapingConfig:
        return self.delivery.domains.get(domain, self.delivery.shaping)


def from_dict(data: dict[str, Any], source: str = "<config>") -> Config:
    try:
        return msgspec.convert(data, Config, dec_hook=dec_hook)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {_readable(str(exc))}") from None


def to_dict(value: Any) -> Any:
    """A config (or part of one) as the plain data :func:`from_dict` takes back: durations
    as strings with a unit (the node hands its config to its worker process this way)."""
    if isinstance(value, Duration):
        return f"{float(value) * 1000:.3f}ms"
    if isinstance(value, Struct):
        return {f: to_dict(getattr(value, f)) for f in value.__struct_fields__}
    if isinstance(value, dict):
        return {k: to_dict(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_dict(v) for v in value]
    return value


def load(path: str | Path | None) -> Config:
    """Load and validate a config file; ``None`` means all defaults."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config file: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return from_dict(data, str(p))


_PATH = re.compile(r" - at `\$(.*)`$")


def _readable(msg: str) -> str:
    """Turn msgspec's ``... - at `$.http`'`` into ``key 'http.x': ...``."""
    m = _PATH.search(msg)
    where = m.group(1).lstrip(".") if m else ""
    text = _PATH.sub("", msg)
    unknown = re.match(r"Object contains unknown field `(.+)`", text)
    if unknown:
        key = f"{where}.{unknown.group(1)}" if where else unknown.group(1)
        return f"unknown key '{key}'"
    key = re.sub(r"\[(\w+)\]", r".\1", where)
    inner = re.match(r"@([^:]+): (.*)$", text, re.DOTALL)
    if inner:  # a __post_init__ check that named its field (config_checks.first)
        key = f"{key}.{inner.group(1)}" if key else inner.group(1)
        text = inner.group(2)
    return f"key '{key or '(top level)'}': {text}"
