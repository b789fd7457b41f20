"""The SMTP client against real servers on loopback: the fake destination and smtp-sink.

Every test runs on the default asyncio loop and on uvloop.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import smtplib
import socket
import subprocess
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import closing, suppress
from typing import Any, TypeVar

import pytest
import uvloop

from postline.deliver import errors
from postline.deliver.connection import SmtpConnection, open_connection
from postline.deliver.errors import Stage
from postline.deliver.smtp_protocol import TlsMode
from postline.model.outcomes import Scope
from postline.testing import fake_smtp
from postline.testing.fake_smtp import FakeSmtpServer, running_in_thread

pytestmark = pytest.mark.timeout(10)

T = TypeVar("T")
Runner = Callable[[Coroutine[Any, Any, T]], T]
BODY = b"From: a@client.test\nSubject: hi\n\n.leading dot\nbody\n"
WIRE_BODY = b"From: a@client.test\r\nSubject: hi\r\n\r\n.leading dot\r\nbody\r\n"


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner[Any]:
    if request.param == "uvloop":
        return uvloop.run
    return asyncio.run


async def connect(
    srv: FakeSmtpServer | int,
    *,
    tls: TlsMode = "opportunistic",
    verify_tls: bool = False,
    ssl_context: Any = None,
    command_timeout: float = 0.3,
    data_timeout: float = 1.0,
) -> SmtpConnection:
    port = srv if isinstance(srv, int) else srv.port
    return await open_connection(
        "127.0.0.1",
        port,
        helo="client.test",
        connect_timeout=1.0,
        command_timeout=command_timeout,
        data_timeout=data_timeout,
        tls=tls,
        verify_tls=verify_tls,
        ssl_context=ssl_context,
        tls_hostname="fake.test",
    )


# -- replies steered by the local part ------------------------------------------------


@pytest.mark.parametrize("pipelining", [True, False])
def test_accepted_message_arrives_unstuffed(run: Runner[None], pipelining: bool) -> None:
    async def scenario() -> None:
        async with FakeSmtpServer(pipelining=pipelining) as srv:
            conn = await connect(srv)
            assert conn.extensions.get("PIPELINING") == ("" if pipelining else None)
            tx = await conn.send("a@client.test", ["bob@x.test", "250-carol@x.test"], BODY)
            assert tx.delivered == ["bob@x.test", "250-carol@x.test"]
            assert tx.data is not None and tx.data.enhanced == "2.0.0"
            await conn.quit()
        (got,) = srv.transactions
        assert got.rcpts == ("bob@x.test", "250-carol@x.test")
        assert got.data == WIRE_BODY and got.mail_from == "a@client.test" and not got.tls
        assert srv.commands["MAIL"] == 1 and srv.commands["QUIT"] == 1

    run(scenario())


@pytest.mark.parametrize("pipelining", [True, False])
@pytest.mark.parametrize(
    ("prefix", "enhanced"),
    [
        ("450", "4.2.0"),
        ("451", "4.3.0"),
        ("452", "4.2.2"),
        ("550", "5.1.1"),
        ("552", "5.2.2"),
        ("553", "5.1.3"),
        ("554", "5.7.1"),
    ],
)
def test_rcpt_refusals(run: Runner[None], prefix: str, enhanced: str, pipelining: bool) -> None:
    async def scenario() -> None:
        async with FakeSmtpServer(pipelining=pipelining) as srv:
            conn = await connect(srv)
            rcpt = f"{prefix}-bob@x.test"
            tx = await conn.send("a@client.test", [rcpt, "carol@x.test"], BODY)
            (refused, reply), (_, ok) = tx.outcomes()
            assert (refused, reply.code, reply.enhanced) == (rcpt, int(prefix), enhanced)
            assert rcpt in reply.text
            assert ok.code == 250 and tx.delivered == ["carol@x.test"]
            tx = await conn.send("a@client.test", [rcpt], BODY)  # alone: no DATA at all
            assert tx.delivered == [] and tx.outcomes()[0][1].code == int(prefix)
            tx = await conn.send("a@client.test", ["dave@x.test"], BODY)  # RSET first
            assert tx.delivered == ["dave@x.test"]
            await conn.quit()
        assert [t.rcpts for t in srv.transactions] == [("carol@x.test",), ("dave@x.test",)]
        assert srv.commands["RSET"] == 1
        assert srv.commands["DATA"] == (3 if pipelining else 2)

    run(scenario())


@pytest.mark.parametrize(("prefix", "code"), [("data550", 550), ("data450", 450)])
def test_refused_at_end_of_data(run: Runner[None], prefix: str, code: int) -> None:
    async def scenario() -> None:
        async with FakeSmtpServer() as srv:
            conn = await connect(srv)
            tx = await conn.send("a@client.test", [f"{prefix}-bob@x.test", "carol@x.test"], BODY)
            assert tx.data is not None and tx.data.code == code
            assert [r.code for _, r in tx.outcomes()] == [code, code]
            assert tx.delivered == []
            assert (await conn.send("a@client.test", ["carol@x.test"], BODY)).delivered
            await conn.quit()
        assert len(srv.transactions) == 1 and srv.commands["RSET"] == 0

    run(scenario())


def test_sender_refused(run: Runner[None]) -> None:
    async def scenario() -> None:
        async with FakeSmtpServer() as srv:
            conn = await connect(srv)
            tx = await conn.send("550-a@client.test", ["bob@x.test", "carol@x.test"], BODY)
            assert tx.mail.code == 550
            assert [r.code for _, r in tx.outcomes()] == [550, 550]
            conn.close()
        assert srv.transactions == []

    run(scenario())


def test_421_at_rcpt_ends_the_session(run: Runner[None]) -> None:
    async def scenario() -> None:
        async with FakeSmtpServer() as srv:
            conn = await connect(srv)
            with pytest.raises(errors.ServiceClosing) as info:
                await conn.send("a@client.test", ["421-bob@x.test"], BODY)
            assert info.value.stage is Stage.RCPT and info.value.scope is Scope.SESSION
            assert info.value.throttled and info.value.response.startswith("421 4.3.2")
            assert not conn.is_open
            with pytest.raises(errors.ConnectionLost):
                await conn.send("a@client.test", ["bob@x.test"], BODY)
            await conn.quit()  # harmless on a dead connection

    run(scenario())


def test_stall_at_rcpt_times_out(run: Runner[None]) -> None:
    async def scenario() -> None:
        async with FakeSmtpServer() as srv:
            conn = await connect(srv, command_timeout=0.3)
            start = time.monotonic()
            with pytest.raises(errors.Timeout) as info:
                await conn.send("a@client.test", ["bob@x.test", "stall-carol@x.test"], BODY)
            assert 0.25 < time.monotonic() - start < 1.0
            assert info.value.stage is Stage.RCPT and info.value.scope is Scope.SESSION
            assert not conn.is_open
        assert srv.transactions == []

    run(scenario())


def test_timeout_runs_per_reply_not_per_group(run: Runner[None]) -> None:
    # 5 pipelined RCPTs answered 0.1 s apart fit a 0.3 s limit per reply.
    async def scenario() -> None:
        async with FakeSmtpServer() as srv:
            conn = await connect(srv, command_timeout=0.3)
            for session in srv._sessions:
                _slow_replies(session, 0.1)
            rcpts = [f"r{i}@x.test" for i in range(5)]
            tx = await conn.send("a@client.test", rcpts, BODY)
            assert tx.delivered == rcpts
            await conn.quit()

    run(scenario())


def _slow_replies(session: Any, delay: float) -> None:
    """Make one fake session write each reply ``delay`` seconds after the previous one."""
    loop = asyncio.get_running_loop()
    original = session._flush
    state = {"at": loop.time()}

    def flush() -> None:
        for chunk in session.out:
            state["at"] = max(state["at"], loop.time()) + delay
            loop.call_at(state["at"], session.transport.write, chunk)
        session.out.clear()

    session._flush = flush
    assert original is not None


def test_drop_mid_data_is_connection_lost(run: Runner[None]) -> None:
    async def scenario() -> None:
        async with FakeSmtpServer() as srv:
            conn = await connect(srv)
            with pytest.raises(errors.ConnectionLost) as info:
                await conn.send("a@client.test", ["drop-bob@x.test"], BODY * 1000)
            assert info.value.stage is Stage.BODY and info.value.scope is Scope.SESSION
            assert not conn.is_open
        assert srv.transactions == [] and srv.replies[354] == 1

    run(scenario())


# -- session set-up -------------------------------------------------------------------


def test_greeting_stall_times_out_against_the_site(run: Runner[None]) -> None:
    async def scenario() -> None:
        async with FakeSmtpServer(greeting_stall=True) as srv:
            with pytest.raises(errors.Timeout) as info:
                await connect(srv, command_timeout=0.2)
            assert info.value.stage is Stage.GREETING and info.value.scope is Scope.SITE

    run(scenario())


def test_greeting_delay_within_the_limit(run: Runner[None]) -> None:
    async def scenario() -> None:
        async with FakeSmtpServer(greeting_delay=0.1) as srv:
            conn = await connect(srv, command_timeout=0.3)
            assert (await conn.send("a@client.test", ["bob@x.test"], BODY)).delivered
            await conn.quit()

    run(scenario())


def test_greeting_refused(run: Runner[None]) -> None:
    async def scenario() -> None:
        async with FakeSmtpServer(greeting="554 5.7.1 no service for you") as srv:
            with pytest.raises(errors.SessionRejected) as info:
                await connect(srv)
            assert info.value.scope is Scope.SITE
            assert info.value.response == "554 5.7.1 no service for you"

    run(scenario())


def test_too_many_connections(run: Runner[None]) -> None:
    async def scenario() -> None:
        async with FakeSmtpServer(max_connections=2) as srv:
            first, second = await connect(srv), await connect(srv)
            with pytest.raises(errors.ServiceClosing) as info:
                await connect(srv)
            assert info.value.stage is Stage.GREETING and info.value.scope is Scope.SITE
            assert info.value.throttled and "too many connections" in info.value.response
            assert srv.max_concurrent == 3 and srv.rejected_connections == 1
            await first.quit()
            await asyncio.sleep(0.05)
            third = await connect(srv)  # a slot is free again
            for conn in (second, third):
                await conn.quit()
        assert srv.connections == 4

    run(scenario())


def test_helo_fallback_without_esmtp(run: Runner[None]) -> None:
    async def scenario() -> None:
        async with FakeSmtpServer(esmtp=False) as srv:
            conn = await connect(srv)
            assert dict(conn.extensions) == {}
            tx = await conn.send("a@client.test", ["bob@x.test", "550-c@x.test"], "é\n".encode())
            assert tx.delivered == ["bob@x.test"]
            await conn.quit()
        assert srv.commands["EHLO"] == 1 and srv.commands["HELO"] == 1
        assert srv.transactions[0].params == ()  # no SIZE, no BODY= without ESMTP

    run(scenario())


def test_connect_refused(run: Runner[None]) -> None:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused

        async def scenario() -> None:
            with pytest.raises(errors.ConnectFailed) as info:
                await connect(port)
            assert info.value.scope is Scope.SITE and info.value.stage is Stage.CONNECT

        run(scenario())


# -- TLS ------------------------------------------------------------------------------


def test_starttls_opportunistic(run: Runner[None]) -> None:
    async def scenario() -> None:
        async with FakeSmtpServer(starttls=True) as srv:
            conn = await connect(srv)
            assert conn.tls and "STARTTLS" not in conn.extensions
            tx = await conn.send("a@client.test", ["bob@x.test"], BODY)
            assert tx.tls and tx.delivered
            await conn.quit()
        assert srv.transactions[0].tls and srv.commands["EHLO"] == 2

    run(scenario())


def test_starttls_verified_against_a_trusted_certificate(run: Runner[None]) -> None:
    async def scenario() -> None:
        async with FakeSmtpServer(starttls=True) as srv:
            ctx = FakeSmtpServer.client_ssl_context()
            conn = await connect(srv, tls="required", ssl_context=ctx)
            assert conn.tls
            await conn.quit()
            with pytest.raises(errors.TlsFailed) as info:  # system CAs do not know it
                await connect(srv, tls="required", verify_tls=True)
            assert info.value.scope is Scope.SITE

    run(scenario())


def test_tls_required_but_not_offered(run: Runner[None]) -> None:
    async def scenario() -> None:
        async with FakeSmtpServer(starttls=False) as srv:
            with pytest.raises(errors.TlsRequired) as info:
                await connect(srv, tls="required")
            assert info.value.scope is Scope.SITE and info.value.status == "4.7.4"

    run(scenario())


def test_tls_off_ignores_the_offer(run: Runner[None]) -> None:
    async def scenario() -> None:
        async with FakeSmtpServer(starttls=True) as srv:
            conn = await connect(srv, tls="off")
            assert not conn.tls and "STARTTLS" in conn.extensions
            assert (await conn.send("a@client.test", ["bob@x.test"], BODY)).delivered
            await conn.quit()
        assert srv.commands["STARTTLS"] == 0 and not srv.transactions[0].tls

    run(scenario())


# -- MAIL parameters ------------------------------------------------------------------


def test_size_limit(run: Runner[None]) -> None:
    async def scenario() -> None:
        async with FakeSmtpServer(size=1000) as srv:
            conn = await connect(srv)
            with pytest.raises(errors.MessageTooBig) as info:
                await conn.send("a@client.test", ["bob@x.test"], b"x\r\n" * 400)
            assert info.value.scope is Scope.MESSAGE and info.value.permanent
            assert conn.is_open  # refused locally: nothing was sent
            assert (await conn.send("a@client.test", ["bob@x.test"], BODY)).delivered
            await conn.quit()
        assert srv.commands["MAIL"] == 1
        assert srv.transactions[0].params == (f"SIZE={len(WIRE_BODY)}",)

    run(scenario())


@pytest.mark.parametrize("offered", [True, False])
def test_8bitmime(run: Runner[None], offered: bool) -> None:
    async def scenario() -> None:
        async with FakeSmtpServer(eightbitmime=offered) as srv:
            conn = await connect(srv)
            await conn.send("a@client.test", ["bob@x.test"], "Grüße\r\n".encode())
            await conn.send("a@client.test", ["bob@x.test"], b"plain\r\n")
            await conn.quit()
        eight, seven = srv.transactions
        assert ("BODY=8BITMIME" in eight.params) is offered
        assert "BODY=8BITMIME" not in seven.params
        assert eight.data == "Grüße\r\n".encode()

    run(scenario())


def test_smtputf8(run: Runner[None]) -> None:
    async def scenario() -> None:
        async with FakeSmtpServer(smtputf8=True) as srv:
            conn = await connect(srv)
            tx = await conn.send("a@client.test", ["jürgen@x.test"], BODY)
            assert tx.delivered == ["jürgen@x.test"]
            await conn.quit()
        assert srv.transactions[0].params[-1] == "SMTPUTF8"
        async with FakeSmtpServer(smtputf8=False) as srv:
            conn = await connect(srv)
            with pytest.raises(errors.SmtpUtf8Unsupported):
                await conn.send("a@client.test", ["jürgen@x.test"], BODY)
            with pytest.raises(errors.SmtpUtf8Unsupported):
                await conn.send("a@client.test", ["bob@x.test"], BODY, smtputf8=True)
            await conn.quit()

    run(scenario())


# -- connection reuse -----------------------------------------------------------------


@pytest.mark.parametrize("pipelining", [True, False])
def test_fifty_messages_on_one_connection(run: Runner[None], pipelining: bool) -> None:
    async def scenario() -> None:
        async with FakeSmtpServer(pipelining=pipelining) as srv:
            conn = await connect(srv)
            delivered = 0
            for i in range(50):
                rcpts = [f"r{i}@x.test"] if i % 10 else [f"550-r{i}@x.test"]
                tx = await conn.send("a@client.test", rcpts, b"Subject: %d\r\n\r\n.\r\n" % i)
                delivered += len(tx.delivered)
            assert (await conn.reset()).code == 250
            await conn.quit()
        assert delivered == 45 and len(srv.transactions) == 45
        assert srv.connections == 1 and srv.commands["MAIL"] == 50
        # each all-refused transaction leaves one RSET behind; plus the explicit one
        assert srv.commands["RSET"] == 5 + 1
        assert srv.transactions[0].data == b"Subject: 1\r\n\r\n.\r\n"

    run(scenario())


def test_server_gone_while_idle(run: Runner[None]) -> None:
    async def scenario() -> None:
        srv = FakeSmtpServer()
        await srv.start()
        conn = await connect(srv)
        await srv.stop()
        await asyncio.sleep(0.05)
        assert not conn.is_open
        with pytest.raises(errors.ConnectionLost):
            await conn.send("a@client.test", ["bob@x.test"], BODY)
        conn.close()

    run(scenario())


def test_cancelled_send_closes_the_connection(run: Runner[None]) -> None:
    async def scenario() -> None:
        async with FakeSmtpServer() as srv:
            conn = await connect(srv, command_timeout=5)
            task = asyncio.ensure_future(conn.send("a@client.test", ["stall-b@x.test"], BODY))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.01)
            assert not conn.is_open

    run(scenario())


# -- interop with Postfix's smtp-sink and stdlib smtplib ------------------------------


@pytest.fixture
def smtp_sink() -> Iterator[int]:
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"])
    sink = shutil.which("smtp-sink", path=path)
    if sink is None:
        pytest.fail("smtp-sink not found: scripts/setup installs Debian's postfix package")
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    proc = subprocess.Popen([sink, *user, f"127.0.0.1:{port}", "64"])
    try:
        deadline = time.monotonic() + 5
        while True:
            with closing(socket.socket()) as s, suppress(OSError):
                s.connect(("127.0.0.1", port))
                break
            assert time.monotonic() < deadline, "smtp-sink did not start"
            time.sleep(0.02)
        yield port
    finally:
        proc.terminate()
        proc.wait()


def test_smtp_sink_interop(run: Runner[None], smtp_sink: int) -> None:
    async def scenario() -> None:
        conn = await connect(smtp_sink, command_timeout=2)
        assert "PIPELINING" in conn.extensions
        for i in range(20):
            rcpts = [f"r{i}-{j}@sink.test" for j in range(3)]
            tx = await conn.send("a@client.test", rcpts, BODY + b"." * i + b"\r\n")
            assert tx.delivered == rcpts
        assert (await conn.reset()).code == 250
        await conn.quit()

    run(scenario())


def test_fake_in_a_thread_serves_smtplib() -> None:
    # An independent client (the stdlib's) checks the fake itself.
    with running_in_thread(FakeSmtpServer(size=0)) as srv:
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=5) as client:
            client.ehlo("smtplib.test")
            assert client.has_extn("pipelining") and client.has_extn("size")
            client.sendmail("a@client.test", ["bob@x.test"], WIRE_BODY)
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                client.sendmail("a@client.test", ["550-bob@x.test"], WIRE_BODY)
        time.sleep(0.05)
    assert [t.data for t in srv.transactions] == [WIRE_BODY]
    assert srv.max_concurrent == 1 and srv.replies[550] == 1


def test_reply_constants_are_named_after_their_code() -> None:
    names = [n for n in dir(fake_smtp) if n[:1] == "S" and n[1:4].isdigit()]
    assert len(names) > 20
    for name in names:
        assert getattr(fake_smtp, name).startswith(name[1:4] + " "), name
