"""SMTP sessions of one destination site: connect (MX failover), then send jobs.

A session takes jobs from its site's ready window until the window is empty for
``IDLE_KEEP`` seconds, the connection has carried ``max_messages_per_connection``
messages, the site's concurrency limit shrank below the running sessions, or the
connection broke. Every outcome goes to the engine's settler without waiting for the
commit; a crash before that commit only repeats deliveries that were in flight.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from postline.deliver import classify
from postline.deliver.connection import SmtpConnection, open_connection
from postline.deliver.errors import MessageError, SmtpClientError
from postline.deliver.render import render
from postline.deliver.smtp_protocol import Transaction
from postline.model.mail import decode_body, decode_personalization
from postline.model.outcomes import Bounced, Deferred, Delivered, Expired, Outcome, Scope
from postline.schedule.destination import Destination
from postline.schedule.ready import Job
from postline.spool.interface import Settle

if TYPE_CHECKING:
    from postline.deliver.engine import Engine

IDLE_KEEP = 0.5  # seconds a connection waits for more work before QUIT


def start_sessions(engine: Engine, site: Destination) -> None:
    """Open as many sessions as the site's work and limits allow."""
    if engine.stopping or site.ready.ready == 0:
        return
    if not site.health.can_connect():
        if site.health.is_probe_due() and site.sessions == 0:
            site.health.begin_probe()
            _spawn(engine, site, probe=True)
        elif site.sessions == 0 and (delay := site.health.delay_until_probe()) is not None:
            # Jobs wait in a suspended site's window with no session to take them (leased
            # just before the suspension drained it). Nothing else calls us when the probe
            # comes due, so they would stay leased past their max age: come back then.
            asyncio.get_running_loop().call_later(delay, start_sessions, engine, site)
        return
    while site.sessions < site.session_limit() and site.sessions < site.ready.ready:
        _spawn(engine, site, probe=False)


def _spawn(engine: Engine, site: Destination, probe: bool) -> None:
    site.sessions += 1
    engine.spawn(_run(engine, site, probe))


async def _run(engine: Engine, site: Destination, probe: bool) -> None:
    try:
        conn = await _connect(engine, site, probe)
        if conn is not None:
            engine.metrics.sessions_opened += 1
            await _serve(engine, site, conn)
    finally:
        site.sessions -= 1
        start_sessions(engine, site)


async def _connect(engine: Engine, site: Destination, probe: bool) -> SmtpConnection | None:
    shaping = site.shaping
    last: SmtpClientError | None = None
    for host, port in site.route.hosts:
        for ip in await engine.router.addresses(host):
            try:
                conn = await open_connection(
                    ip,
                    port,
                    helo=engine.cfg.delivery.helo_name,
                    connect_timeout=float(shaping.connect_timeout),
                    command_timeout=float(shaping.command_timeout),
                    data_timeout=float(shaping.data_timeout),
                    tls="required" if shaping.require_tls else "opportunistic",
                    verify_tls=shaping.verify_tls,
                    tls_hostname=host,
                )
            except SmtpClientError as exc:
                last = exc
                if exc.throttled:  # 421 at greeting: the site is busy
                    site.concurrency.on_throttle()
                    if site.sessions > 1:
                        return None  # other sessions run: the site is alive, fewer will do
                    # The only session was refused. Returning here made start_sessions
                    # reconnect at once, forever (a hot loop), and the leased jobs in the
                    # window never expired. Try the next host; if every host refuses, the
                    # site is down like any other (deferral, suspension, probe).
                continue
            (site.health.on_probe_success if probe else site.health.on_session_success)()
            return conn
    _site_down(engine, site, probe, last)
    return None


def _site_down(engine: Engine, site: Destination, probe: bool, err: SmtpClientError | None) -> None:
    """Every host failed: suspend unless other sessions prove the site alive."""
    site.concurrency.on_connect_failure()
    if probe:
        site.health.on_probe_failure()
    elif site.sessions <= 1:
        site.health.all_hosts_failed()
    else:
        site.health.on_session_failure()
        return
    reason = err.response if err is not None else "no address for any MX host"
    engine.defer_waiting(site, classify.classify_connection_failure(reason))


async def _serve(engine: Engine, site: Destination, conn: SmtpConnection) -> None:
    sent = 0
    try:
        while sent < site.shaping.max_messages_per_connection and not engine.stopping:
            if site.sessions > site.session_limit():
                break
            job = await site.ready.wait_take(IDLE_KEEP)
            if job is None:
                break
            await _throttle(site)
            sent += 1
            if not await _send(engine, site, conn, job):
                return
        await conn.quit()
    finally:
        conn.close()


async def _throttle(site: Destination) -> None:
    while not site.bucket.try_take():
        await asyncio.sleep(site.bucket.delay_until_available())


async def _send(engine: Engine, site: Destination, conn: SmtpConnection, job: Job) -> bool:
    """Deliver one job; False when the connection is no longer usable."""
    now = engine.clock()
    if engine.expired(job, now):
        _finish(engine, site, job, [Expired("expired before delivery")] * job.size)
        return True
    try:
        data, mail_from, smtputf8 = await _render(engine, job, now)
        tx = await conn.send(mail_from, [x.rcpt for x in job.leases], data, smtputf8=smtputf8)
    except MessageError as exc:
        # The message, not the address, is at fault: a block, so the address is not suppressed.
        bounce = Bounced(exc.response, exc.status, "blocked", "Content", Scope.MESSAGE)
        _finish(engine, site, job, [bounce] * job.size)
        return True
    except SmtpClientError as exc:
        deferred = Deferred(exc.response, exc.scope, exc.throttled)
        _finish(engine, site, job, [deferred] * job.size)
        if exc.throttled:
            site.concurrency.on_throttle()
        return False
    outcomes = [_rcpt_outcome(tx, i, conn) for i in range(job.size)]
    _finish(engine, site, job, outcomes)
    return True


async def _render(engine: Engine, job: Job, now: float) -> tuple[bytes, str, bool]:
    body = decode_body(job.body)
    pers = decode_personalization(job.personalization)
    msg = render(body, pers, message_id=job.meta.smtp_id, date=now)
    data = msg.data
    signer = engine.signer_for(msg.mail_from.rpartition("@")[2].lower())
    if signer is not None:
        # RSA signing releases the GIL: on a signing thread it overlaps with the event loop
        # (2-core box: 1,963 -> see the issue note, msg/s end to end with RSA-2048).
        loop = asyncio.get_running_loop()
        data = await loop.run_in_executor(engine.signing_pool, signer.sign, data) + data
    return data, msg.mail_from, msg.smtputf8


def _rcpt_outcome(tx: Transaction, i: int, conn: SmtpConnection) -> Outcome:
    reply, alone = tx.outcome(i)
    return classify.classify_reply(
        reply.code,
        reply.text,
        enhanced=reply.enhanced or None,
        scope=Scope.RECIPIENT if alone else Scope.MESSAGE,
        ip=conn.remote_ip,
        tls=conn.tls,
    )


def _finish(engine: Engine, site: Destination, job: Job, outcomes: list[Outcome]) -> None:
    settles: list[Settle] = []
    for lease, outcome in zip(job.leases, outcomes, strict=True):
        settles.append(engine.outcome(job, lease, outcome))
        if isinstance(outcome, Deferred) and outcome.throttled:
            site.concurrency.on_throttle()
    if any(isinstance(o, Delivered) for o in outcomes):
        site.concurrency.on_success(site.sessions)
    engine.finish(site, job, settles)
