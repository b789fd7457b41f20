"""The sections of a single node's config: ``[http]``, ``[smtp]``, ``[delivery]`` and the rest.

Each setting is declared once with its default and one line of doc; a section's
``__post_init__`` checks what a type alone cannot (config_checks.py) and names the key.
``[cluster]`` is in config_cluster.py, the root that holds them all in config.py.
"""

from __future__ import annotations

import re

from msgspec import field

from postline import config_checks as checks
from postline.config_types import Duration, Section
from postline.config_types import duration as _d


class HttpConfig(Section):
    listen: str = "127.0.0.1:8025"  # host:port of the HTTP API
    # Request bytes; above it 413 before reading. 30 MB of message (SendGrid's limit,
    # checked after decoding) is ~41 MB of JSON once attachments are base64-encoded.
    max_body: int = 48 * 1024 * 1024
    node_name: str = "pl1"  # appears in sg_message_id
    max_request_line: int = 8192  # bytes of the request URL; longer is 414
    max_header_line: int = 8192  # bytes of one header line; longer is 431
    max_header_bytes: int = 64 * 1024  # bytes of all header lines of a request; more is 431
    max_headers: int = 100  # header lines per request; more is 431
    # A keep-alive connection with no request in progress is closed after this.
    idle_timeout: Duration = field(default_factory=lambda: _d("60s"))
    # A request's headers (a new connection's first bytes too) must arrive within this: 408.
    header_timeout: Duration = field(default_factory=lambda: _d("10s"))
    # A request's body must arrive within this after its headers: 408 (48 MB at 800 KB/s).
    body_timeout: Duration = field(default_factory=lambda: _d("60s"))
    # Open connections in all (kept under half the fd limit) and per client address; over
    # a cap a connection gets 503 and is closed. Behind a proxy, raise the per-address cap.
    max_connections: int = 4096
    max_connections_per_ip: int = 256
    # Failed authentications from one address within a minute before its 401s are held.
    auth_fail_limit: int = 10
    auth_fail_delay: Duration = field(default_factory=lambda: _d("1s"))  # how long held
    metrics_key: str = ""  # when set, GET /metrics needs "Authorization: Bearer <key>"
    metrics_listen: str = ""  # host:port: serve /metrics there, not on the API's listener

    def __post_init__(self) -> None:
        metrics = self.metrics_listen
        checks.first(
            ("listen", checks.hostport_problem(self.listen)),
            ("metrics_listen", checks.hostport_problem(metrics) if metrics else None),
            *((name, "must be > 0") for name in _HTTP_POSITIVE if getattr(self, name) <= 0),
        )


_HTTP_POSITIVE = (  # settings of [http] that must be > 0
    "max_request_line",
    "max_header_line",
    "max_header_bytes",
    "max_headers",
    "max_connections",
    "max_connections_per_ip",
    "auth_fail_limit",
    "idle_timeout",
    "header_timeout",
    "body_timeout",
)


class SmtpConfig(Section):
    # host:port of the SMTP relay (plaintext with STARTTLS, e.g. 2525 and 587); a list for
    # several; "" or [] for none.
    listen: str | list[str] = "127.0.0.1:2525"
    tls_listen: list[str] = field(default_factory=list)  # implicit TLS (port 465 style)
    # PEM certificate chain and key for STARTTLS and tls_listen; when both are empty a
    # self-signed pair is made once into <data_dir>/smtp-tls.{crt,key} (the log says so).
    tls_cert: str = ""
    tls_key: str = ""
    hostname: str = ""  # in the greeting, EHLO and Received; "": delivery.helo_name
    trusted_networks: list[str] = field(default_factory=list)  # CIDRs relaying without AUTH
    # AUTH without TLS: refused (538) except from loopback clients; allow_plaintext_auth
    # allows it from anywhere, plaintext_auth_loopback = false treats loopback as remote.
    allow_plaintext_auth: bool = False
    plaintext_auth_loopback: bool = True
    max_message_size: int = 30 * 1024 * 1024  # SIZE; larger is 552
    max_recipients: int = 1000  # RCPT per message; more get 452
    max_header_bytes: int = 1024 * 1024  # the header section of a message; more is 552
    max_connections: int = 1000
    max_connections_per_ip: int = 50  # Postfix's smtpd_client_connection_count_limit
    max_messages_per_connection: int = 5000  # SendGrid's limit; then 421
    command_timeout: Duration = field(default_factory=lambda: _d("5m"))  # Postfix smtpd_timeout
    data_timeout: Duration = field(default_factory=lambda: _d("10m"))  # the whole DATA phase
    auth_fail_limit: int = 10  # failed AUTHs a minute per address before answers are held
    auth_fail_delay: Duration = field(default_factory=lambda: _d("1s"))
    auth_fail_ban: int = 30  # failed AUTHs a minute per address: then 421 for auth_ban_time
    auth_ban_time: Duration = field(default_factory=lambda: _d("10m"))
    # true: the relay speaks SMTP in a worker process of its own (smtp/worker.py), started
    # at the first connection, so protocol work never waits on the spool writer's GIL
    # (postline bench smtp: see the note in smtp/worker.py); false: in the node.
    worker: bool = True

    @property
    def listeners(self) -> list[str]:
        if isinstance(self.listen, str):
            return [self.listen] if self.listen else []
        return list(self.listen)

    def __post_init__(self) -> None:
        checks.first(
            *(("listen", checks.hostport_problem(a)) for a in self.listeners),
            *(("tls_listen", checks.hostport_problem(a)) for a in self.tls_listen),
            *(("trusted_networks", checks.cidr_problem(n)) for n in self.trusted_networks),
            (
                "tls_key",
                "set both tls_cert and tls_key, or neither"
                if bool(self.tls_cert) != bool(self.tls_key)
                else None,
            ),
        )


class ShapingConfig(Section):
    """Traffic shaping of one destination site (defaults, or a per-domain override)."""

    max_connections: int = 10  # concurrent connections to the site
    max_message_rate: float = 0.0  # messages per second, token bucket; 0 = unlimited
    max_messages_per_connection: int = 100  # then the connection is closed and reopened
    connect_timeout: Duration = field(default_factory=lambda: _d("30s"))
    command_timeout: Duration = field(default_factory=lambda: _d("60s"))
    data_timeout: Duration = field(default_factory=lambda: _d("180s"))
    require_tls: bool = False  # refuse to deliver without STARTTLS
    verify_tls: bool = False  # verify the certificate (with require_tls)


class DkimKey(Section):
    selector: str
    private_key: str  # path to a PEM file (RSA or Ed25519)
    algorithm: str = "rsa-sha256"  # or "ed25519-sha256"


class DeliveryConfig(Section):
    routes: dict[str, str] = field(default_factory=dict)  # domain or "*" -> host:port
    retry_min: Duration = field(default_factory=lambda: _d("5m"))  # first retry delay
    retry_max: Duration = field(default_factory=lambda: _d("1h"))  # ceiling of the retry delay
    max_age: Duration = field(default_factory=lambda: _d("72h"))  # then bounced as expired
    helo_name: str = "localhost"  # EHLO name
    # Right-hand side of generated Message-IDs; "": helo_name or the system's FQDN when it
    # is a dotted name other than localhost, else each message's From domain.
    message_id_domain: str = ""
    mx_port: int = 25  # port of MX hosts found in DNS (tests point it at a fake MTA)
    window: int = 1000  # max deliveries held in memory per destination site
    enabled: bool = True  # false: accept and spool only (benchmarks of the accept path)
    shaping: ShapingConfig = field(default_factory=ShapingConfig)
    domains: dict[str, ShapingConfig] = field(default_factory=dict)  # per-domain overrides
    dkim: dict[str, DkimKey] = field(default_factory=dict)  # sending domain -> key

    def __post_init__(self) -> None:
        if not 0 < self.retry_min <= self.retry_max:
            raise ValueError("retry_min must be > 0 and <= retry_max")
        if self.max_age <= 0 or self.window < 1:
            raise ValueError("max_age must be > 0 and window >= 1")
        hops = self.routes.items()
        msgid = self.message_id_domain
        bad_msgid = f"{msgid!r} is not a dotted domain name (e.g. 'mail.example.com')"
        checks.first(
            *((f'routes."{d}"', checks.hostport_problem(t, False)) for d, t in hops),
            ("message_id_domain", bad_msgid if msgid and not _DOTTED.fullmatch(msgid) else None),
        )


_NAME_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOTTED = re.compile(rf"{_NAME_LABEL}(?:\.{_NAME_LABEL})+")  # a dotted host name


class DnsConfig(Section):
    nameservers: list[str] = field(default_factory=list)  # "ip" or "ip:port"; system default
    timeout: Duration = field(default_factory=lambda: _d("5s"))

    def __post_init__(self) -> None:
        checks.first(*(("nameservers", checks.ip_port_problem(n)) for n in self.nameservers))


class WebhooksConfig(Section):
    """Event webhooks (events/webhooks*): batching, retries, receiver addresses."""

    # Posting to loopback, private, link-local or otherwise non-public addresses; checked
    # when a webhook is created and again at every connection (DNS rebinding).
    allow_private: bool = False
    retry_min: Duration = field(default_factory=lambda: _d("5s"))  # first retry delay
    retry_max: Duration = field(default_factory=lambda: _d("10m"))  # ceiling of the delay
    max_age: Duration = field(default_factory=lambda: _d("72h"))  # then: the dead-letter store
    batch_events: int = 1000  # events per POST at most
    batch_bytes: int = 1024 * 1024  # octets per POST at most
    batch_wait: Duration = field(default_factory=lambda: _d("200ms"))  # fill time of a batch
    timeout: Duration = field(default_factory=lambda: _d("10s"))  # per POST
    max_webhooks: int = 10  # per tenant

    def __post_init__(self) -> None:
        names = ("batch_events", "batch_bytes", "max_webhooks")
        checks.first(*((name, "must be >= 1") for name in names if getattr(self, name) < 1))


class EventsConfig(Section):
    """The event log and its consumers (events/consumer.py, events/retention.py)."""

    retention: Duration = field(default_factory=lambda: _d("24h"))  # consumed, then pruned
    poll: Duration = field(default_factory=lambda: _d("100ms"))  # a caught-up consumer's poll
    # The consumers (activity, stats, webhooks) in a process of their own beside the node
    # (events/worker.py), so they never take the mail path's CPU; false: in the node.
    worker: bool = True


class ActivityConfig(Section):
    """The activity store (GET /v3/messages): <data_dir>/activity.duckdb."""

    enabled: bool = True
    retention: Duration = field(default_factory=lambda: _d("30d"))
    memory_limit: str = "1GB"  # DuckDB's memory_limit for the store


class StatsConfig(Section):
    """Statistics rollups (GET /v3/stats, /v3/categories/stats): <data_dir>/stats.db."""

    enabled: bool = True


class SpoolConfig(Section):
    fsync: bool = True  # synchronous=FULL: an acknowledged batch survives power loss
    commit_window: Duration = field(default_factory=lambda: _d("0ms"))  # extra wait to batch
    min_free_bytes: int = 64 * 1024 * 1024  # below this free space, refuse new mail (503)
    reserve_bytes: int = 32 * 1024 * 1024  # held in data_dir/spool.reserve for settles; 0 = none

    def __post_init__(self) -> None:
        names = ("min_free_bytes", "reserve_bytes")
        checks.first(*((name, "must be >= 0") for name in names if getattr(self, name) < 0))


class BouncesConfig(Section):
    """The return path (deliver/verp.py) and ``postline inbound``."""

    # false: the From address is the envelope sender, asynchronous bounces go to it unread.
    verp: bool = True
    # Domain of the bounces+<token>@ envelope sender; its MX should lead to a local MTA
    # piping to `postline inbound`. "": the From address's own domain (SPF and DMARC
    # alignment stay as they were; route bounces+* there to postline inbound).
    domain: str = ""
    secret: str = ""  # HMAC key of the tokens; "": generated once into <data_dir>/bounce.key


class LogConfig(Section):
    level: str = "info"  # debug, info, warning or error
    # One JSON line per delivery outcome (sent, deferred, bounced, dropped, expired), at
    # this level: "info", "debug" (written only when level = "debug") or "off".
    outcomes: str = "info"

    def __post_init__(self) -> None:
        bad = self.outcomes not in ("info", "debug", "off")
        outcomes = f"{self.outcomes!r}: use 'info', 'debug' or 'off'" if bad else None
        checks.first(("level", checks.level_problem(self.level)), ("outcomes", outcomes))
