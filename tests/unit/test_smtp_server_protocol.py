"""The sans-I/O SMTP server fed scripted client bytes: no sockets, no clock."""

from __future__ import annotations

import base64
import re

import pytest

from postline.deliver.replies import Reply, ReplyParser
from postline.smtp import replies as r
from postline.smtp.data import DataReader, Refusal
from postline.smtp.events import (
    AuthRequest,
    CloseConnection,
    DataChunk,
    Envelope,
    Event,
    Limits,
    MessageAborted,
    MessageComplete,
    MessageRefused,
    MessageStart,
    SessionPolicy,
    StartTls,
)
from postline.smtp.protocol import Phase, ServerProtocol

pytestmark = pytest.mark.timeout(30)

TRUSTED = SessionPolicy("mx.test", trusted=True)
ENVELOPE = b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"


def b64(text: str) -> bytes:
    return base64.b64encode(text.encode()).strip()


def events(proto: ServerProtocol) -> list[Event]:
    out = []
    while (event := proto.next_event()) is not None:
        out.append(event)
    return out


def replies(proto: ServerProtocol) -> list[Reply]:
    return ReplyParser().feed(proto.bytes_to_send())


def codes(proto: ServerProtocol) -> list[int]:
    return [reply.code for reply in replies(proto)]


def session(policy: SessionPolicy = TRUSTED, limits: Limits | None = None) -> ServerProtocol:
    proto = ServerProtocol(policy, limits)
    assert proto.bytes_to_send() == b"220 mx.test ESMTP Postline\r\n"
    proto.receive_data(b"EHLO client.test\r\n")
    assert codes(proto) == [250]
    return proto


def body_of(evs: list[Event]) -> bytes:
    return b"".join(e.data for e in evs if isinstance(e, DataChunk))


# -- reply constants ---------------------------------------------------------------------


def test_reply_constant_names_match_their_codes() -> None:
    constants = {k: v for k, v in vars(r).items() if re.fullmatch(r"S\d{3}_[A-Z0-9_]+", k)}
    assert len(constants) > 40
    for name, text in constants.items():
        code = name[1:4]
        assert re.fullmatch(r"\d{3} [^\r\n]*", text), name
        assert text.startswith(code + " "), name
        (reply,) = ReplyParser().feed(r.encode(text))
        if code[0] in "245":  # RFC 3463 has classes 2, 4, 5 only; 3xx go without
            assert reply.enhanced.startswith(code[0] + "."), name
        else:
            assert not reply.enhanced, name


# -- greeting, EHLO, HELO, simple commands ----------------------------------------------


def test_ehlo_advertises_extensions() -> None:
    proto = ServerProtocol(SessionPolicy("mx.test", tls_available=True), Limits(1000))
    proto.bytes_to_send()
    proto.receive_data(b"EHLO client.test\r\n")
    (reply,) = replies(proto)
    assert reply.lines == (
        "mx.test", "PIPELINING", "SIZE 1000", "8BITMIME", "SMTPUTF8",
        "ENHANCEDSTATUSCODES", "STARTTLS",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("policy", "auth"),
    [
        (SessionPolicy("h"), False),  # plaintext, remote: AUTH only after STARTTLS
        (SessionPolicy("h", plaintext_auth=True), True),  # loopback
        (SessionPolicy("h", tls_active=True), True),  # implicit TLS
        (SessionPolicy("h", tls_active=True, auth_enabled=False), False),
    ],
)
def test_auth_is_advertised_only_when_usable(policy: SessionPolicy, auth: bool) -> None:
    proto = ServerProtocol(policy)
    proto.receive_data(b"EHLO c\r\n")
    ehlo = replies(proto)[1]
    assert ("AUTH PLAIN LOGIN" in ehlo.lines) is auth
    assert "STARTTLS" not in ehlo.lines


def test_helo_and_simple_commands() -> None:
    proto = ServerProtocol(TRUSTED)
    proto.bytes_to_send()
    proto.receive_data(
        b"HELO c\r\nNOOP\r\nVRFY bob\r\nVRFY\r\nEXPN list\r\nHELP\r\nRSET\r\nXYZZY\r\n\r\n"
    )
    assert [str(x) for x in replies(proto)] == [
        "250 mx.test", r.S250_OK, r.S252_CANNOT_VRFY, r.S501_SYNTAX, r.S502_NOT_IMPLEMENTED,
        r.S214_HELP, r.S250_OK, r.S500_UNKNOWN_COMMAND, r.S500_UNKNOWN_COMMAND,
    ]  # fmt: skip


def test_ehlo_needs_a_hostname() -> None:
    proto = ServerProtocol(TRUSTED)
    proto.bytes_to_send()
    proto.receive_data(b"EHLO\r\nHELO \r\nMAIL FROM:<a@x.test>\r\n")
    assert [str(x) for x in replies(proto)] == [r.S501_NO_HOSTNAME] * 2 + [r.S503_NEED_HELO]


def test_quit_closes() -> None:
    proto = session()
    proto.receive_data(b"QUIT\r\nNOOP\r\n")
    assert proto.bytes_to_send() == b"221 2.0.0 Bye\r\n"
    assert events(proto) == [CloseConnection(r.S221_BYE)]
    assert proto.closed


# -- a transaction ---------------------------------------------------------------------


def test_pipelined_transaction_streams_the_message() -> None:
    proto = session()
    proto.receive_data(
        b"MAIL FROM:<a@x.test> SIZE=100 BODY=8BITMIME\r\nRCPT TO:<b@y.test>\r\n"
        b"RCPT TO:<c@y.test>\r\nDATA\r\nSubject: hi\r\n\r\n..dot\r\n"
    )
    assert codes(proto) == [250, 250, 250, 354]
    envelope = Envelope(
        "client.test", "a@x.test", ("b@y.test", "c@y.test"), 100, "8BITMIME", False, None, False
    )
    assert events(proto) == [MessageStart(envelope), DataChunk(b"Subject: hi\r\n\r\n.dot")]
    proto.receive_data(b".\r\nQUIT\r\n")
    assert events(proto) == [DataChunk(b"\r\n"), MessageComplete(envelope, 21)]
    assert proto.phase is Phase.WAIT_MESSAGE
    assert proto.bytes_to_send() == b""  # no 250 before the adapter committed; QUIT waits
    proto.accept_message("Q1")
    assert proto.bytes_to_send() == b"250 2.0.0 Ok: queued as Q1\r\n221 2.0.0 Bye\r\n"


def test_second_transaction_and_refused_commit() -> None:
    proto = session()
    proto.receive_data(ENVELOPE + b"one\r\n.\r\n")
    events(proto)
    proto.refuse_message(r.S452_STORAGE_FULL)
    proto.receive_data(b"RCPT TO:<b@y.test>\r\n" + ENVELOPE + b".\r\n")
    assert [str(x) for x in replies(proto)][-4:] == [
        r.S503_NEED_MAIL, r.S250_SENDER_OK, r.S250_RCPT_OK, r.S354_END_DATA,
    ]  # fmt: skip
    assert [type(e) for e in events(proto)] == [MessageStart, MessageComplete]
    with pytest.raises(ValueError):
        proto.refuse_message("250 fine")


@pytest.mark.parametrize(
    ("commands", "last"),
    [
        (b"RCPT TO:<b@y.test>\r\n", r.S503_NEED_MAIL),
        (b"DATA\r\n", r.S503_NEED_MAIL),
        (b"MAIL FROM:<a@x.test>\r\nDATA\r\n", r.S554_NO_VALID_RCPTS),
        (b"MAIL FROM:<a@x.test>\r\nMAIL FROM:<a@x.test>\r\n", r.S503_NESTED_MAIL),
        (b"MAIL FROM:<a@x.test> SIZE=1001\r\n", r.S552_TOO_BIG),
        (b"MAIL FROM:<a@x.test> SIZE=x\r\n", r.S501_BAD_PARAMETER),
        (b"MAIL FROM:<a@x.test> BODY=BINARYMIME\r\n", r.S501_BAD_PARAMETER),
        (b"MAIL FROM:<a@x.test> RET=FULL\r\n", r.S555_UNKNOWN_PARAMETER),
        (b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test> NOTIFY=NEVER\r\n", r.S555_UNKNOWN_PARAMETER),
        (b"MAIL FROM:<a b@x.test>\r\n", r.S501_BAD_SENDER),
        (b"MAIL FROM:<nodomain>\r\n", r.S501_BAD_SENDER),
        (b"MAIL TO:<a@x.test>\r\n", r.S501_SYNTAX),
        (b"MAIL FROM:<a@x.test>\r\nRCPT TO:<>\r\n", r.S501_BAD_RECIPIENT),
        ("MAIL FROM:<ä@x.test>\r\n".encode(), r.S553_SMTPUTF8_REQUIRED),
        (b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA now\r\n", r.S501_SYNTAX),
    ],
)
def test_refused_commands(commands: bytes, last: str) -> None:
    proto = session(limits=Limits(max_message_size=1000))
    proto.receive_data(commands)
    assert str(replies(proto)[-1]) == last


def test_accepted_address_forms() -> None:
    proto = session()
    proto.receive_data(
        b"MAIL FROM:<>\r\nRCPT TO: <@relay.test:b@y.test>\r\nRCPT TO:c@y.test\r\nRSET\r\n"
        + "MAIL FROM:<ä@x.test> SMTPUTF8 AUTH=<>\r\nRCPT TO:<ö@y.test>\r\nDATA\r\n".encode()
    )
    assert codes(proto) == [250] * 6 + [354]
    start = events(proto)[0]
    assert isinstance(start, MessageStart)
    assert start.envelope.recipients == ("ö@y.test",) and start.envelope.smtputf8


def test_recipient_limit_is_452_and_not_an_error() -> None:
    proto = session(limits=Limits(max_recipients=2, max_errors=1))
    rcpts = b"".join(b"RCPT TO:<r%d@y.test>\r\n" % i for i in range(4))
    proto.receive_data(b"MAIL FROM:<a@x.test>\r\n" + rcpts + b"DATA\r\n")
    assert [str(x) for x in replies(proto)][3:] == [r.S452_TOO_MANY_RCPTS] * 2 + [r.S354_END_DATA]
    start = events(proto)[0]
    assert isinstance(start, MessageStart) and len(start.envelope.recipients) == 2


# -- relay policy and AUTH ----------------------------------------------------------------


def test_mail_needs_auth_unless_trusted() -> None:
    proto = session(SessionPolicy("mx.test"))
    proto.receive_data(b"MAIL FROM:<a@x.test>\r\n")
    assert [str(x) for x in replies(proto)] == [r.S530_AUTH_REQUIRED]


def auth_session() -> ServerProtocol:
    return session(SessionPolicy("mx.test", plaintext_auth=True))


def test_auth_plain_with_initial_response() -> None:
    proto = auth_session()
    proto.receive_data(b"AUTH PLAIN " + b64("\0apikey\0SG.key") + b"\r\nMAIL FROM:<a@x.test>\r\n")
    assert events(proto) == [AuthRequest("PLAIN", "", "apikey", "SG.key")]
    assert proto.bytes_to_send() == b""  # MAIL waits for the verdict
    assert proto.waiting
    with pytest.raises(RuntimeError):
        proto.accept_message("Q1")
    proto.auth_result(True)
    assert not proto.waiting
    assert [str(x) for x in replies(proto)] == [r.S235_AUTH_OK, r.S250_SENDER_OK]
    assert proto.username == "apikey"
    proto.receive_data(b"AUTH PLAIN\r\n")
    assert [str(x) for x in replies(proto)] == [r.S503_AUTH_ACTIVE]


def test_auth_plain_with_continuation_and_failure() -> None:
    proto = auth_session()
    proto.receive_data(b"AUTH PLAIN\r\n")
    assert proto.bytes_to_send() == b"334 \r\n"
    proto.receive_data(b64("admin\0apikey\0wrong") + b"\r\n")
    assert events(proto) == [AuthRequest("PLAIN", "admin", "apikey", "wrong")]
    proto.auth_result(False)
    proto.receive_data(b"MAIL FROM:<a@x.test>\r\n")
    assert [str(x) for x in replies(proto)] == [r.S535_AUTH_FAILED, r.S530_AUTH_REQUIRED]
    assert proto.username is None


def test_auth_login_two_prompts_and_initial_username() -> None:
    proto = auth_session()
    proto.receive_data(b"AUTH LOGIN\r\n")
    assert proto.bytes_to_send() == b"334 VXNlcm5hbWU6\r\n"
    proto.receive_data(b64("apikey") + b"\r\n")
    assert proto.bytes_to_send() == b"334 UGFzc3dvcmQ6\r\n"
    proto.receive_data(b64("SG.key") + b"\r\n")
    assert events(proto) == [AuthRequest("LOGIN", "", "apikey", "SG.key")]
    proto = auth_session()
    proto.receive_data(b"auth login " + b64("apikey") + b"\r\n" + b64("pw") + b"\r\n")
    assert proto.bytes_to_send() == b"334 UGFzc3dvcmQ6\r\n"
    assert events(proto) == [AuthRequest("LOGIN", "", "apikey", "pw")]


@pytest.mark.parametrize(
    ("lines", "last"),
    [
        (b"AUTH LOGIN\r\n*\r\n", r.S501_AUTH_CANCELLED),
        (b"AUTH PLAIN\r\n*\r\n", r.S501_AUTH_CANCELLED),
        (b"AUTH PLAIN\r\n!!!\r\n", r.S501_AUTH_MALFORMED),
        (b"AUTH PLAIN " + b64("no-nuls") + b"\r\n", r.S501_AUTH_MALFORMED),
        (b"AUTH CRAM-MD5\r\n", r.S504_AUTH_MECHANISM),
    ],
)
def test_auth_cancelled_or_malformed(lines: bytes, last: str) -> None:
    proto = auth_session()
    proto.receive_data(lines + b"NOOP\r\n")
    assert [str(x) for x in replies(proto)][-2:] == [last, r.S250_OK]
    assert events(proto) == []


def test_plaintext_auth_refused_without_tls() -> None:
    proto = session(SessionPolicy("mx.test", tls_available=True))
    proto.receive_data(b"AUTH PLAIN " + b64("\0apikey\0SG.key") + b"\r\n")
    assert [str(x) for x in replies(proto)] == [r.S538_ENCRYPTION_REQUIRED]
    assert events(proto) == []


# -- STARTTLS -------------------------------------------------------------------------


def test_starttls_resets_and_drops_pipelined_commands() -> None:
    """CVE-2011-0411: commands after STARTTLS in the same read must not run under TLS."""
    proto = session(SessionPolicy("mx.test", tls_available=True))
    proto.receive_data(b"STARTTLS\r\nAUTH PLAIN " + b64("\0apikey\0k") + b"\r\nMAIL FROM:<a@x>\r\n")
    assert proto.bytes_to_send() == b"220 2.0.0 Ready to start TLS\r\n"
    assert events(proto) == [StartTls()]
    proto.receive_data(b"RSET\r\n")  # plaintext before the handshake: dropped too
    proto.tls_started()
    assert proto.bytes_to_send() == b""
    proto.receive_data(b"AUTH PLAIN " + b64("\0apikey\0k") + b"\r\n")
    assert [str(x) for x in replies(proto)] == [r.S503_NEED_HELO]  # EHLO forgotten
    proto.receive_data(b"EHLO c\r\nSTARTTLS\r\n")
    ehlo, again = replies(proto)
    assert "AUTH PLAIN LOGIN" in ehlo.lines and "STARTTLS" not in ehlo.lines
    assert str(again) == r.S503_TLS_ACTIVE
    assert events(proto) == []


def test_starttls_unavailable_or_during_transaction() -> None:
    proto = session()
    proto.receive_data(b"STARTTLS\r\n")
    assert [str(x) for x in replies(proto)] == [r.S454_TLS_UNAVAILABLE]
    proto = session(SessionPolicy("mx.test", tls_available=True, trusted=True))
    proto.receive_data(b"MAIL FROM:<a@x.test>\r\nSTARTTLS\r\n")
    assert [str(x) for x in replies(proto)] == [r.S250_SENDER_OK, r.S503_BAD_SEQUENCE]


# -- limits ---------------------------------------------------------------------------


def test_long_command_line_is_500_and_skipped() -> None:
    proto = session()
    proto.receive_data(b"NOOP " + b"x" * 505 + b"\r\n")  # 512 octets: the limit
    proto.receive_data(b"NOOP " + b"x" * 506 + b"\r\nNOOP\r\n")
    assert [str(x) for x in replies(proto)] == [r.S250_OK, r.S500_LINE_TOO_LONG, r.S250_OK]
    proto.receive_data(b"NOOP " + b"x" * 100_000)  # no line end: refused early, not buffered
    assert [str(x) for x in replies(proto)] == [r.S500_LINE_TOO_LONG]
    assert len(proto._lines.buf) < 2
    proto.receive_data(b"x" * 1000 + b"\r\nNOOP\r\n")
    assert [str(x) for x in replies(proto)] == [r.S250_OK]


def test_auth_lines_may_be_longer() -> None:
    proto = auth_session()
    token = b64("\0apikey\0" + "k" * 600)
    proto.receive_data(b"AUTH PLAIN " + token + b"\r\n")
    assert events(proto) == [AuthRequest("PLAIN", "", "apikey", "k" * 600)]


def test_bare_newlines_in_commands_are_refused() -> None:
    proto = session()
    proto.receive_data(b"NOOP\nNOOP\rNOOP\r\nNOOP\r\n")
    assert [str(x) for x in replies(proto)] == [r.S500_BARE_NEWLINE] * 2 + [r.S250_OK]


def test_too_many_errors_is_421_and_close() -> None:
    proto = session(limits=Limits(max_errors=3))
    proto.receive_data(b"BAD\r\nBAD\r\nBAD\r\nNOOP\r\n")
    assert codes(proto) == [500, 500, 500, 421]
    assert events(proto) == [CloseConnection(r.S421_TOO_MANY_ERRORS)]
    proto.receive_data(b"NOOP\r\n")
    assert proto.bytes_to_send() == b""


def test_adapter_close_and_eof_abort_a_message() -> None:
    proto = session()
    proto.receive_data(ENVELOPE + b"partial")
    events(proto)
    proto.bytes_to_send()
    proto.close(r.S421_TIMEOUT)
    assert events(proto) == [MessageAborted(), CloseConnection(r.S421_TIMEOUT)]
    assert proto.bytes_to_send() == r.encode(r.S421_TIMEOUT)
    proto = session()
    proto.receive_data(ENVELOPE + b"partial")
    events(proto)
    proto.receive_eof()
    assert events(proto) == [MessageAborted()] and proto.closed


def test_a_decision_after_close_is_ignored() -> None:
    proto = session(SessionPolicy("mx.test", plaintext_auth=True, trusted=True))
    proto.receive_data(ENVELOPE + b".\r\n")
    proto.bytes_to_send()
    proto.receive_eof()
    proto.accept_message("Q1")  # e.g. the spool commit finished after the client left
    assert proto.closed and proto.bytes_to_send() == b""
    proto = session(SessionPolicy("mx.test", plaintext_auth=True))
    proto.receive_data(b"AUTH PLAIN " + b64("\0apikey\0k") + b"\r\n")
    proto.close(r.S421_TIMEOUT)
    proto.auth_result(True)
    assert proto.bytes_to_send() == r.encode(r.S421_TIMEOUT) and proto.username is None


# -- DATA: size, bare newlines, smuggling -------------------------------------------------


def test_message_over_size_is_552_after_the_end_of_data() -> None:
    proto = session(limits=Limits(max_message_size=10))
    proto.receive_data(ENVELOPE + b"0123456789")
    proto.receive_data(b"\r\nmore and more\r\n")
    proto.receive_data(b".\r\nNOOP\r\n")
    evs = events(proto)
    assert evs[-1] == MessageRefused(r.S552_TOO_BIG)
    assert len(body_of(evs)) <= 10
    assert [str(x) for x in replies(proto)][-2:] == [r.S552_TOO_BIG, r.S250_OK]


@pytest.mark.parametrize(
    "probe", [b"\n.\r\n", b"\r.\r\n", b"\r\n.\n", b"\n.\n", b"\r\n.\r", b"x\ry", b"x\ny"]
)
def test_smuggling_probes_are_refused_and_never_end_the_data(probe: bytes) -> None:
    smuggled = b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<v@y.test>\r\nDATA\r\nevil\r\n.\r\n"
    proto = session()
    proto.receive_data(ENVELOPE + b"text" + probe + smuggled + b"QUIT\r\n")
    evs = events(proto)
    assert [type(e) for e in evs] == [MessageStart, MessageRefused, CloseConnection]
    assert evs[1] == MessageRefused(r.S554_BARE_NEWLINE)
    # the data ended at the first true CRLF.CRLF; QUIT is then a command
    assert [str(x) for x in replies(proto)][-2:] == [r.S554_BARE_NEWLINE, r.S221_BYE]


def test_dot_unstuffing_and_empty_message() -> None:
    reader = DataReader(1000)
    assert reader.feed(b".\r\n") == (b"", b"")
    reader = DataReader(1000)
    out, rest = reader.feed(b"..a\r\n.b\r\n...\r\n.\r\nNOOP")
    assert (out, rest) == (b".a\r\nb\r\n..\r\n", b"NOOP")
    reader = DataReader(1000)
    whole = b""
    for byte in b"x\r\n..\r\n.\r\n":
        out, rest = reader.feed(bytes([byte]))
        whole += out
    assert (whole, rest, reader.refused) == (b"x\r\n.\r\n", b"", None)


def test_data_reader_refusals() -> None:
    reader = DataReader(4)
    assert reader.feed(b"12345") == (b"", None)
    assert reader.refused is Refusal.TOO_BIG
    reader = DataReader(100)
    reader.feed(b"a\r")
    assert reader.feed(b"b\r\n.\r\n") == (b"", b"")
    assert reader.refused is Refusal.BARE_NEWLINE


def test_large_message_is_streamed_not_accumulated() -> None:
    proto = session(limits=Limits(max_message_size=3_000_000))
    proto.receive_data(ENVELOPE)
    events(proto)
    block = b"y" * 998 + b"\r\n"
    sizes = []
    for _ in range(3):
        proto.receive_data(block * 1000)  # 1 MB per read
        sizes += [len(e.data) for e in events(proto) if isinstance(e, DataChunk)]
        assert not proto._lines.buf
    # each read is released at once, but for the final CRLF (a terminator may follow)
    assert sizes == [1_000_000 - 2, 1_000_000, 1_000_000]
    proto.receive_data(b".\r\n")
    assert [type(e) for e in events(proto)] == [DataChunk, MessageComplete]
