"""The delivery engine's counters: outcomes, sessions, and the trouble it survived.

Plain integers the engine and its sessions bump in place (no lock: one event loop);
``GET /metrics`` reads them at scrape time (:func:`postline.node_metrics.engine_families`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Metrics:
    delivered: int = 0
    deferred: int = 0
    bounced: int = 0
    expired: int = 0
    expiry_overruns: int = 0
    sessions_opened: int = 0
    job_errors: int = 0  # unforeseen exceptions that a job or lease survived (each logged)
    settle_errors: int = 0  # outcomes the spool refused with an error (left leased, retried)
    send_pauses: int = 0  # times new sends stopped because outcomes could not be recorded
