"""Outcome → spool settlement + SendGrid event (pure; the clock and randomness injected).

* Delivered → ``delivered`` (response, ip, tls 0/1).
* Deferred → ``deferred`` (response, attempt as a string, ip) and a retry at
  :func:`postline.schedule.backoff.next_attempt_at`; when no retry fits before the
  message's expiry, the message expires now instead.
* Bounced → ``bounce`` (type bounce|blocked, reason, status, bounce_classification) and
  the address onto the bounce list (hard bounce) or block list (block).
* Expired → ``bounce`` with status 4.4.7 (RFC 3463: delivery time expired); not
  suppressed, since the address itself was never refused.

Each outcome also writes one line to the outcome log (:mod:`postline.deliver.outcome_log`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from postline.deliver import outcome_log as olog
from postline.deliver.classify import suppression_list
from postline.deliver.outcome_log import OutcomeLog
from postline.model.events import BOUNCE, DEFERRED, DELIVERED, EventRecord, make_event
from postline.model.outcomes import Bounced, Deferred, Delivered, Expired, Outcome
from postline.schedule.backoff import next_attempt_at
from postline.schedule.ready import MessageMeta
from postline.spool.interface import Lease, Settle, Settlement


class Recorder:
    def __init__(
        self,
        retry_min: float,
        retry_max: float,
        clock: Callable[[], float] = time.time,
        rand: random.Random | None = None,
        outcomes: OutcomeLog | None = None,
    ) -> None:
        self._retry_min = retry_min
        self._retry_max = retry_max
        self._clock = clock
        self._rand = rand or random.Random()
        self.outcomes = outcomes or OutcomeLog("off")

    def settle(self, lease: Lease, meta: MessageMeta, outcome: Outcome) -> Settle:
        settle = self._settle(lease, meta, outcome)
        if self.outcomes.enabled():
            self._log(settle, outcome)
        return settle

    def _log(self, settle: Settle, outcome: Outcome) -> None:
        lease = settle.lease
        status = _STATUS[settle.settlement]
        ip = outcome.ip if not isinstance(outcome, Expired) else ""
        reply = outcome.response
        dsn = ""
        if isinstance(outcome, Bounced):
            dsn = outcome.status
        elif settle.settlement is Settlement.EXPIRED:
            dsn = "4.4.7"
        self.outcomes.line(
            tenant=lease.tenant,
            sg_message_id=lease.sg_message_id,
            recipient=lease.rcpt,
            relay=self.outcomes.relays.relay(lease.domain, ip),
            created_at=lease.created_at,
            attempt=lease.attempts + 1,
            status=status,
            reply=reply,
            dsn=dsn,
        )

    def _settle(self, lease: Lease, meta: MessageMeta, outcome: Outcome) -> Settle:
        now = self._clock()
        if isinstance(outcome, Delivered):
            extra = {"response": outcome.response, "ip": outcome.ip, "tls": int(outcome.tls)}
            return Settle(lease, Settlement.DELIVERED, self._event(DELIVERED, lease, meta, extra))
        if isinstance(outcome, Deferred):
            return self._deferred(lease, meta, outcome, now)
        if isinstance(outcome, Bounced):
            return self._bounced(lease, meta, outcome)
        return self._expired(lease, meta, outcome)

    def _deferred(self, lease: Lease, meta: MessageMeta, out: Deferred, now: float) -> Settle:
        attempt = lease.attempts + 1
        max_age = lease.expires_at - lease.created_at
        retry_at = next_attempt_at(
            now, attempt, lease.created_at, max_age, self._retry_min, self._retry_max, self._rand
        )
        if retry_at is None:
            return self._expired(lease, meta, Expired(out.response))
        extra = {"response": out.response, "attempt": str(attempt), "ip": out.ip}
        event = self._event(DEFERRED, lease, meta, extra)
        return Settle(lease, Settlement.DEFERRED, event, retry_at=retry_at)

    def _bounced(self, lease: Lease, meta: MessageMeta, out: Bounced) -> Settle:
        extra = {
            "type": out.type,
            "reason": out.response,
            "status": out.status,
            "bounce_classification": out.classification,
            "ip": out.ip,
            "tls": int(out.tls),
        }
        event = self._event(BOUNCE, lease, meta, extra)
        listname = suppression_list(out)
        suppress = (listname, out.response, out.status) if listname else None
        return Settle(lease, Settlement.BOUNCED, event, suppress=suppress)

    def _expired(self, lease: Lease, meta: MessageMeta, out: Expired) -> Settle:
        extra = {
            "type": "bounce",
            "reason": f"message expired without delivery; last error: {out.response}",
            "status": "4.4.7",
            "bounce_classification": "Technical Failure",
        }
        return Settle(lease, Settlement.EXPIRED, self._event(BOUNCE, lease, meta, extra))

    def _event(
        self, kind: str, lease: Lease, meta: MessageMeta, extra: dict[str, Any]
    ) -> EventRecord:
        return make_event(
            kind,
            tenant=lease.tenant,
            email=lease.rcpt,
            ts=self._clock(),
            sg_message_id=meta.sg_message_id,
            smtp_id=meta.smtp_id,
            categories=meta.categories,
            custom_args=meta.custom_args,
            extra=extra,
        )


_STATUS = {
    Settlement.DELIVERED: olog.SENT,
    Settlement.DEFERRED: olog.DEFERRED,
    Settlement.BOUNCED: olog.BOUNCED,
    Settlement.EXPIRED: olog.EXPIRED,
}
