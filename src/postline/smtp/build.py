"""The relay server as the config describes it, wherever it runs (the node's process with
``[smtp] worker = false``, else the relay worker: smtp/worker.py)."""

from __future__ import annotations

from postline.accept.expand import message_id_domain
from postline.accept.relay import Accept, RelayIntake
from postline.config import Config
from postline.smtp.server import KeyLookup, RelayServer
from postline.smtp.tls import server_context


def relay_server(cfg: Config, accept: Accept, lookup: KeyLookup) -> RelayServer:
    smtp = cfg.smtp
    hostname = smtp.hostname or cfg.delivery.helo_name
    intake = RelayIntake(
        accept=accept,
        node=cfg.http.node_name,
        hostname=hostname,
        message_id_host=message_id_domain(cfg.delivery.message_id_domain, cfg.delivery.helo_name),
        max_age=float(cfg.delivery.max_age),
        max_header_bytes=smtp.max_header_bytes,
        data_dir=cfg.data_dir,
    )
    tls = server_context(smtp.tls_cert, smtp.tls_key, cfg.data_dir, hostname)
    return RelayServer(smtp, intake=intake, lookup=lookup, hostname=hostname, tls=tls)
