"""SMTP sessions of one destination site: connect (MX failover), then send jobs.

A session takes jobs from its site's ready window until the window is empty for
``IDLE_KEEP`` seconds, the connection has carried ``max_messages_per_connection``
messages, the site's concurrency limit shrank below the running sessions, or the
connection broke. Every outcome goes to the engine's settler without waiting for the
commit; a crash before that commit only repeats deliveries that were in flight.

Every job taken from the window is settled exactly once, whatever is raised while it is
rendered, signed or sent (:func:`postline.deliver.errors.job_failure`): a poison message
once held its window slot and its lease, and a thousand of them wedged their destination.
After an unforeseen exception in the SMTP exchange the connection is closed, not reused.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from postline.deliver import classify
from postline.deliver.connection import SmtpConnection, open_connection
from postline.deliver.errors import (
    ConnectFailed,
    MessageError,
    SmtpClientError,
    Stage,
    job_failure,
)
from postline.deliver.render import RenderedMessage, render
from postline.deliver.render_raw import render_raw
from postline.deliver.smtp_events import Transaction
from postline.model.mail import decode_body, decode_personalization
from postline.model.outcomes import Bounced, Deferred, Delivered, Expired, Outcome, Scope
from postline.schedule.destination import Destination
from postline.schedule.ready import Job

if TYPE_CHECKING:
    from postline.deliver.dkim import DkimSigner
    from postline.deliver.engine import Engine

log = logging.getLogger("postline.deliver")

# A relayed message with X-SMTPAPI substitutions may grow in render; past this it bounces
# (2x the relay's default SIZE, as render's bound for HTTP requests is 2x their limit).
RAW_MAX_SIZE = 60 * 1024 * 1024
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
    engine.sessions.add(engine.spawn(_run(engine, site, probe)))


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
    last: SmtpClientError | None = None
    for host, port in site.route.hosts:
        for ip in await _addresses(engine, host):
            try:
                conn = await _open(engine, site, host, ip, port)
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


async def _open(engine: Engine, site: Destination, host: str, ip: str, port: int) -> SmtpConnection:
    shaping = site.shaping
    try:
        return await open_connection(
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
    except SmtpClientError:
        raise
    except Exception as exc:
        # Unforeseen (a bug, an odd OS error): a failed connection rather than a crashed
        # session, which start_sessions would answer by respawning it at once, in a loop.
        log.error("connect failed", exc_info=exc, extra={"site": site.key, "ip": ip})
        raise ConnectFailed(f"connect to {ip}:{port}: {exc}", stage=Stage.CONNECT) from exc


async def _addresses(engine: Engine, host: str) -> list[str]:
    try:
        return await engine.router.addresses(host)
    except Exception as exc:  # a resolver bug: like a host without addresses
        log.error("address lookup failed", exc_info=exc, extra={"host": host})
        return []


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
            sent += 1
            if not await _attempt(engine, site, conn, job):
                return
        await conn.quit()
    finally:
        conn.close()


async def _attempt(engine: Engine, site: Destination, conn: SmtpConnection, job: Job) -> bool:
    """Throttle, then send one job; False when the connection is no longer usable.

    Whatever is raised, the job is settled exactly once and its window slot freed: an
    exception that escaped here once held the slot and the lease (an hour) for good.
    """
    task = asyncio.current_task()
    assert task is not None
    engine.in_flight[task] = job  # a stopping engine waits for it (engine.STOP_SEND_GRACE)
    try:
        if not site.bucket.try_take():  # most jobs: a token at hand, no coroutine to await
            await _throttle(site)
        outcomes, usable = await _send(engine, site, conn, job)
    except Exception as exc:  # unforeseen: the connection's state is unknown, so close it
        outcomes, usable = _failed(engine, site, job, exc, "send"), False
    finally:
        del engine.in_flight[task]
    _finish(engine, site, job, outcomes)
    return usable


async def _throttle(site: Destination) -> None:
    while not site.bucket.try_take():
        await asyncio.sleep(site.bucket.delay_until_available())


async def _send(
    engine: Engine, site: Destination, conn: SmtpConnection, job: Job
) -> tuple[list[Outcome], bool]:
    """The outcomes of delivering one job, and whether the connection is still usable."""
    now = engine.clock()
    if engine.expired(job, now):
        return [Expired("expired before delivery")] * job.size, True
    try:
        msg = _render(job)
    except Exception as exc:  # the stored message cannot be rendered: nothing was sent
        return _failed(engine, site, job, exc, "render"), True
    try:
        signer = engine.signer_for(_sign_domain(msg))
        data = msg.data if signer is None else await _sign(engine, signer, msg.data)
    except Exception as exc:  # nothing was sent either: the connection stays usable
        return _failed(engine, site, job, exc, "sign"), True
    try:
        rcpts = [x.rcpt for x in job.leases]
        tx = await conn.send(_return_path(engine, job, msg), rcpts, data, smtputf8=msg.smtputf8)
    except MessageError as exc:
        # The message, not the address, is at fault: a block, so the address is not suppressed.
        bounce = Bounced(exc.response, exc.status, "blocked", "Content", Scope.MESSAGE)
        return [bounce] * job.size, True
    except SmtpClientError as exc:
        if exc.throttled:
            site.concurrency.on_throttle()
        return [Deferred(exc.response, exc.scope, exc.throttled)] * job.size, False
    return [_rcpt_outcome(tx, i, conn) for i in range(job.size)], True


def _sign_domain(msg: RenderedMessage) -> str:
    return (msg.sign_domain or msg.mail_from.rpartition("@")[2]).lower()


def _render(job: Job) -> RenderedMessage:
    if job.relay is not None:  # relayed over SMTP: as received (deliver/render_raw.py)
        return render_raw(job.body, job.relay, max_size=RAW_MAX_SIZE)
    # The acceptance time, stored with every delivery: each retry carries the same Date.
    accepted = job.leases[0].created_at
    if job.decoded is not None:  # decoded at load (deliver/jobs.py), the body once a batch
        body, pers, bound = job.decoded
        return render(body, pers, message_id=job.meta.smtp_id, date=accepted, bound=bound)
    body = decode_body(job.body)
    pers = decode_personalization(job.personalization)
    return render(body, pers, message_id=job.meta.smtp_id, date=accepted)


def _return_path(engine: Engine, job: Job, msg: RenderedMessage) -> str:
    """The envelope sender: the message's VERP address (deliver/verp.py), else From."""
    if engine.return_path is None or not msg.mail_from:  # the null sender stays null
        return msg.mail_from
    sg_id = job.meta.sg_message_id or job.leases[0].sg_message_id
    domain = msg.mail_from.rpartition("@")[2]
    return engine.return_path.address(job.tenant, sg_id, domain) or msg.mail_from


async def _sign(engine: Engine, signer: DkimSigner, data: bytes) -> bytes:
    # RSA signing releases the GIL: on a signing thread it overlaps with the event loop
    # (2-core box: 1,963 -> see the issue note, msg/s end to end with RSA-2048).
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(engine.signing_pool, signer.sign, data) + data


def _failed(
    engine: Engine, site: Destination, job: Job, exc: Exception, stage: str
) -> list[Outcome]:
    """Log (once per job, with its id) and count an unforeseen exception; its outcomes."""
    log.error(
        "delivery job failed",
        exc_info=exc,
        extra={"sg_message_id": job.meta.sg_message_id, "stage": stage, "site": site.key},
    )
    engine.metrics.job_errors += 1
    return [job_failure(exc, stage)] * job.size


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
    try:
        settles = [engine.outcome(job, x, o) for x, o in zip(job.leases, outcomes, strict=True)]
    except Exception as exc:  # an outcome that cannot be recorded must not hold the slot
        log.error(
            "recording outcomes failed; leases released",
            exc_info=exc,
            extra={"sg_message_id": job.meta.sg_message_id, "site": site.key},
        )
        engine.metrics.job_errors += 1
        engine.abandon(site, job)
        return
    for outcome in outcomes:
        if isinstance(outcome, Deferred) and outcome.throttled:
            site.concurrency.on_throttle()
    if any(isinstance(o, Delivered) for o in outcomes):
        site.concurrency.on_success(site.sessions)
    engine.finish(site, job, settles)
