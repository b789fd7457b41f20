"""The sans-I/O SMTP client fed scripted server bytes: no sockets, no clock."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postline.deliver.errors import (
    ConnectionLost,
    InvalidAddress,
    LineTooLong,
    MessageTooBig,
    ProtocolError,
    ServiceClosing,
    SessionRejected,
    SmtpUtf8Unsupported,
    Stage,
    Timeout,
    TlsRequired,
)
from postline.deliver.message_data import BODY_CHUNK, STREAM_ABOVE, encode_data
from postline.deliver.replies import Reply, ReplyParser, parse_ehlo
from postline.deliver.smtp_events import (
    Closed,
    Established,
    Event,
    ResetDone,
    StartTls,
    Transaction,
    TransactionDone,
)
from postline.deliver.smtp_protocol import ClientProtocol, TlsMode
from postline.model.outcomes import Scope

pytestmark = pytest.mark.timeout(30)

GREETING = b"220 mx.test ESMTP\r\n"
EHLO_PIPE = b"250-mx.test\r\n250-PIPELINING\r\n250-SIZE 10000\r\n250 8BITMIME\r\n"
EHLO_PLAIN = b"250-mx.test\r\n250 8BITMIME\r\n"
EHLO_TLS = b"250-mx.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n"
OK_MAIL = b"250 2.1.0 Ok\r\n"
OK_RCPT = b"250 2.1.5 Ok\r\n"
GO_AHEAD = b"354 go ahead\r\n"
QUEUED = b"250 2.0.0 queued\r\n"
UNKNOWN = b"550 5.1.1 <b@x.test>: user unknown\r\n"


def events(proto: ClientProtocol) -> list[Event]:
    out = []
    while (event := proto.next_event()) is not None:
        out.append(event)
    return out


def session(ehlo: bytes = EHLO_PIPE, tls: TlsMode = "opportunistic") -> ClientProtocol:
    proto = ClientProtocol("me.test", tls=tls)
    proto.receive_data(GREETING)
    assert proto.data_to_send() == b"EHLO me.test\r\n"
    proto.receive_data(ehlo)
    assert [type(e) for e in events(proto)] == [Established]
    return proto


def done(proto: ClientProtocol) -> Transaction:
    (event,) = events(proto)
    assert isinstance(event, TransactionDone)
    return event.transaction


# -- replies --------------------------------------------------------------------------


def test_multiline_reply_and_enhanced_code() -> None:
    (reply,) = ReplyParser().feed(b"550-5.1.1 first\r\n550-5.1.1 second\r\n550 5.1.1 third\r\n")
    assert reply.code == 550
    assert reply.lines == ("5.1.1 first", "5.1.1 second", "5.1.1 third")
    assert reply.enhanced == "5.1.1"
    assert reply.text == "first second third"
    assert str(reply) == "550 5.1.1 first 5.1.1 second 5.1.1 third"
    assert reply.permanent and not reply.transient and not reply.positive


def test_enhanced_code_must_match_the_reply_class() -> None:
    assert Reply.from_lines(550, ("4.1.1 odd",)).enhanced == ""
    assert Reply.from_lines(250, ("2.0.0",)).enhanced == "2.0.0"
    assert Reply.from_lines(250, ("2.0.0x",)).enhanced == ""


def test_bare_code_and_bare_lf_lines_are_accepted() -> None:
    assert ReplyParser().feed(b"250\n221 bye\r\n") == [
        Reply(250, ("",)),
        Reply(221, ("bye",)),
    ]


@pytest.mark.parametrize(
    "raw", [b"25 short\r\n", b"abc text\r\n", b"250_x\r\n", b"650 no\r\n", b"250-a\r\n251 b\r\n"]
)
def test_malformed_replies(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        ReplyParser().feed(raw)


def test_endless_line_is_refused() -> None:
    with pytest.raises(ProtocolError):
        ReplyParser().feed(b"250 " + b"x" * 70000)


def test_reply_encode_round_trips() -> None:
    reply = Reply.from_lines(250, ("mx.test", "PIPELINING", "SIZE 10"))
    assert ReplyParser().feed(reply.encode()) == [reply]
    assert parse_ehlo(reply) == {"PIPELINING": "", "SIZE": "10"}


STREAM = GREETING + EHLO_PIPE + b"250-2.1.0 a\r\n250 2.1.0 b\r\n" + OK_RCPT + UNKNOWN + GO_AHEAD


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
@settings(max_examples=200, deadline=None)
def test_replies_do_not_depend_on_packet_boundaries(cuts: list[int]) -> None:
    whole = ReplyParser().feed(STREAM)
    parser = ReplyParser()
    got: list[Reply] = []
    bounds = [0, *sorted(cuts), len(STREAM)]
    for a, b in itertools.pairwise(bounds):
        got += parser.feed(STREAM[a:b])
    assert got == whole
    assert not parser.partial


# -- session set-up -------------------------------------------------------------------


def test_ehlo_extensions() -> None:
    proto = session()
    assert proto.extensions == {"PIPELINING": "", "SIZE": "10000", "8BITMIME": ""}
    assert proto.pipelining


def test_helo_fallback_on_5xx() -> None:
    proto = ClientProtocol("me.test")
    proto.receive_data(GREETING + b"502 5.5.2 what\r\n")
    assert proto.data_to_send() == b"EHLO me.test\r\nHELO me.test\r\n"
    proto.receive_data(b"250 mx.test\r\n")
    assert events(proto) == [Established({}, False)]


@pytest.mark.parametrize(
    ("raw", "error", "stage"),
    [
        (b"554 5.7.1 go away\r\n", SessionRejected, Stage.GREETING),
        (b"421 4.7.0 too many connections\r\n", ServiceClosing, Stage.GREETING),
        (GREETING + b"451 4.3.0 later\r\n", SessionRejected, Stage.EHLO),
        (GREETING + b"500 no\r\n554 no\r\n", SessionRejected, Stage.HELO),
    ],
)
def test_session_refused(raw: bytes, error: type[Exception], stage: Stage) -> None:
    proto = ClientProtocol("me.test")
    with pytest.raises(error) as info:
        proto.receive_data(raw)
    assert getattr(info.value, "stage", None) is stage
    assert getattr(info.value, "scope", None) is Scope.SITE  # before the session: the site
    assert not proto.is_open


def test_starttls_opportunistic() -> None:
    proto = ClientProtocol("me.test")
    proto.receive_data(GREETING + EHLO_TLS)
    assert proto.data_to_send().endswith(b"STARTTLS\r\n")
    proto.receive_data(b"220 2.0.0 ready\r\n")
    assert events(proto) == [StartTls()]
    assert proto.stage is Stage.TLS
    proto.tls_started()
    assert proto.data_to_send() == b"EHLO me.test\r\n"
    proto.receive_data(EHLO_PIPE)
    assert events(proto) == [Established(proto.extensions, True)]
    assert proto.tls_active


def test_starttls_refused_is_fine_unless_required() -> None:
    proto = ClientProtocol("me.test")
    proto.receive_data(GREETING + EHLO_TLS + b"454 4.7.0 TLS not available\r\n")
    assert [type(e) for e in events(proto)] == [Established]
    assert not proto.tls_active
    proto = ClientProtocol("me.test", tls="required")
    with pytest.raises(TlsRequired):
        proto.receive_data(GREETING + EHLO_TLS + b"454 4.7.0 TLS not available\r\n")


def test_tls_required_but_not_offered() -> None:
    proto = ClientProtocol("me.test", tls="required")
    with pytest.raises(TlsRequired) as info:
        proto.receive_data(GREETING + EHLO_PIPE)
    assert info.value.scope is Scope.SITE and info.value.status == "4.7.4"


def test_tls_off_ignores_the_offer() -> None:
    proto = session(EHLO_TLS, tls="off")
    assert b"STARTTLS" not in proto.data_to_send()


def test_data_pipelined_after_starttls_reply_is_refused() -> None:
    proto = ClientProtocol("me.test")
    with pytest.raises(ProtocolError):
        proto.receive_data(GREETING + EHLO_TLS + b"220 go\r\n250 injected\r\n")


# -- transactions ---------------------------------------------------------------------


def test_pipelined_transaction_is_one_write_and_replies_match_in_order() -> None:
    proto = session()
    proto.start_transaction("a@x.test", ["b@x.test", "c@x.test"], b"Hi\r\n")
    assert proto.data_to_send() == (
        b"MAIL FROM:<a@x.test> SIZE=4\r\nRCPT TO:<b@x.test>\r\nRCPT TO:<c@x.test>\r\nDATA\r\n"
    )
    proto.receive_data(OK_MAIL + UNKNOWN + OK_RCPT)
    assert proto.data_to_send() == b""  # nothing before 354
    proto.receive_data(GO_AHEAD)
    assert proto.data_to_send() == b"Hi\r\n.\r\n"
    assert proto.stage is Stage.BODY
    proto.receive_data(QUEUED)
    tx = done(proto)
    assert [r.code for r in tx.rcpts] == [550, 250]
    assert tx.outcome(0) == (tx.rcpts[0], True) and tx.outcome(1) == (tx.data, False)
    assert tx.delivered == ["c@x.test"]
    assert [(rcpt, r.code) for rcpt, r in tx.outcomes()] == [("b@x.test", 550), ("c@x.test", 250)]


def test_lockstep_without_pipelining() -> None:
    proto = session(EHLO_PLAIN)
    proto.start_transaction("a@x.test", ["b@x.test", "c@x.test"], b"Hi\r\n")
    assert proto.data_to_send() == b"MAIL FROM:<a@x.test>\r\n"
    proto.receive_data(OK_MAIL)
    assert proto.data_to_send() == b"RCPT TO:<b@x.test>\r\n"
    proto.receive_data(UNKNOWN)
    assert proto.data_to_send() == b"RCPT TO:<c@x.test>\r\n"
    proto.receive_data(OK_RCPT)
    assert proto.data_to_send() == b"DATA\r\n"
    proto.receive_data(GO_AHEAD)
    assert proto.data_to_send() == b"Hi\r\n.\r\n"
    proto.receive_data(QUEUED)
    assert done(proto).delivered == ["c@x.test"]


def test_lockstep_all_refused_skips_data_and_resets_before_the_next() -> None:
    proto = session(EHLO_PLAIN)
    proto.start_transaction("a@x.test", ["b@x.test"], b"Hi")
    proto.receive_data(OK_MAIL)
    proto.data_to_send()
    proto.receive_data(UNKNOWN)
    assert proto.data_to_send() == b""
    tx = done(proto)
    assert tx.data is None and tx.delivered == []
    proto.start_transaction("a@x.test", ["c@x.test"], b"Hi")
    assert proto.data_to_send() == b"RSET\r\n"
    proto.receive_data(b"250 2.0.0 Ok\r\n")
    assert proto.data_to_send() == b"MAIL FROM:<a@x.test>\r\n"


def test_pipelined_all_refused_data_refused_then_rset_leads_the_next_group() -> None:
    proto = session()
    proto.start_transaction("a@x.test", ["b@x.test"], b"Hi")
    proto.data_to_send()
    proto.receive_data(OK_MAIL + UNKNOWN + b"554 5.5.1 no valid recipients\r\n")
    tx = done(proto)
    assert tx.data is not None and tx.data.code == 554
    assert tx.outcomes()[0][1].code == 550
    proto.start_transaction("a@x.test", ["c@x.test"], b"Hi")
    assert proto.data_to_send().startswith(b"RSET\r\nMAIL FROM:")
    proto.receive_data(b"250 Ok\r\n" + OK_MAIL + OK_RCPT + GO_AHEAD)
    proto.receive_data(QUEUED)
    assert done(proto).delivered == ["c@x.test"]


def test_pipelined_354_without_recipients_sends_an_empty_message() -> None:
    # RFC 2920 §3.1: a server may accept DATA though it refused every RCPT
    proto = session()
    proto.start_transaction("a@x.test", ["b@x.test"], b"secret body")
    proto.data_to_send()
    proto.receive_data(OK_MAIL + UNKNOWN + GO_AHEAD)
    assert proto.data_to_send() == b".\r\n"
    proto.receive_data(QUEUED)
    tx = done(proto)
    assert tx.delivered == [] and tx.data is None


@pytest.mark.parametrize("ehlo", [EHLO_PIPE, EHLO_PLAIN])
def test_mail_refused_decides_every_recipient(ehlo: bytes) -> None:
    proto = session(ehlo)
    proto.start_transaction("550-a@x.test", ["b@x.test", "c@x.test"], b"Hi")
    proto.data_to_send()
    refusal = b"550 5.7.1 sender refused\r\n"
    need_mail = b"503 5.5.1 need MAIL\r\n"
    proto.receive_data(refusal + (need_mail * 3 if proto.pipelining else b""))
    tx = done(proto)
    assert [(rcpt, r.code) for rcpt, r in tx.outcomes()] == [("b@x.test", 550), ("c@x.test", 550)]
    assert tx.rcpts == (tx.mail, tx.mail) and tx.outcome(1) == (tx.mail, True)
    proto.start_transaction("a@x.test", ["c@x.test"], b"Hi")
    assert proto.data_to_send().startswith(b"MAIL")  # a refused MAIL opens no transaction


def test_data_refused_at_end() -> None:
    proto = session()
    proto.start_transaction("a@x.test", ["b@x.test"], b"Hi")
    proto.receive_data(OK_MAIL + OK_RCPT + GO_AHEAD + b"550 5.7.1 spam\r\n")
    tx = done(proto)
    assert tx.data is not None and tx.data.code == 550
    assert tx.delivered == [] and tx.outcomes()[0][1].enhanced == "5.7.1"


def test_421_mid_transaction_ends_the_session() -> None:
    proto = session()
    proto.start_transaction("a@x.test", ["421-b@x.test"], b"Hi")
    with pytest.raises(ServiceClosing) as info:
        proto.receive_data(OK_MAIL + b"421 4.3.2 closing\r\n")
    assert info.value.stage is Stage.RCPT and info.value.scope is Scope.SESSION
    assert info.value.throttled and not proto.is_open


def test_eof_while_waiting_is_connection_lost() -> None:
    proto = session()
    proto.start_transaction("a@x.test", ["b@x.test"], b"Hi")
    proto.receive_data(OK_MAIL + OK_RCPT + GO_AHEAD)
    with pytest.raises(ConnectionLost) as info:
        proto.receive_eof()
    assert info.value.stage is Stage.BODY and info.value.scope is Scope.SESSION


def test_eof_or_421_while_idle_surfaces_at_the_next_use() -> None:
    proto = session()
    proto.receive_eof()
    assert not proto.is_open
    with pytest.raises(ConnectionLost):
        proto.start_transaction("a@x.test", ["b@x.test"], b"Hi")
    proto = session()
    proto.receive_data(b"421 4.4.2 idle timeout\r\n")
    with pytest.raises(ServiceClosing):
        proto.start_transaction("a@x.test", ["b@x.test"], b"Hi")


def test_unexpected_reply_is_a_protocol_error() -> None:
    proto = session()
    with pytest.raises(ProtocolError):
        proto.receive_data(b"250 who asked\r\n")


def test_one_transaction_at_a_time() -> None:
    proto = session()
    proto.start_transaction("a@x.test", ["b@x.test"], b"Hi")
    with pytest.raises(RuntimeError):
        proto.start_transaction("a@x.test", ["b@x.test"], b"Hi")
    with pytest.raises(ValueError):
        session().start_transaction("a@x.test", [], b"Hi")


def test_reset_and_quit() -> None:
    proto = session()
    proto.reset()
    assert proto.data_to_send() == b"RSET\r\n"
    proto.receive_data(b"250 2.0.0 Ok\r\n")
    assert [type(e) for e in events(proto)] == [ResetDone]
    proto.quit()
    assert proto.data_to_send() == b"QUIT\r\n"
    proto.receive_data(b"221 2.0.0 Bye\r\n")
    assert [type(e) for e in events(proto)] == [Closed]
    assert not proto.is_open
    proto = session()
    proto.quit()
    proto.receive_eof()  # closing without a 221 is fine after QUIT
    assert events(proto) == [Closed(None)]


# -- MAIL parameters and local refusals ------------------------------------------------


def test_size_parameter_and_local_refusal() -> None:
    proto = session()
    with pytest.raises(MessageTooBig) as info:
        proto.start_transaction("a@x.test", ["b@x.test"], (b"x" * 98 + b"\r\n") * 101)
    assert info.value.scope is Scope.MESSAGE and info.value.permanent
    assert proto.data_to_send() == b""
    proto.start_transaction("a@x.test", ["b@x.test"], b"x\n" * 10)  # still usable
    assert proto.data_to_send().startswith(b"MAIL FROM:<a@x.test> SIZE=30\r\n")  # CRLF counted


def test_8bitmime_only_for_8bit_content_when_offered() -> None:
    proto = session()
    proto.start_transaction("a@x.test", ["b@x.test"], "Grüße\r\n".encode())
    assert b"BODY=8BITMIME" in proto.data_to_send()
    proto = session(b"250 mx.test\r\n")
    proto.start_transaction("a@x.test", ["b@x.test"], "Grüße\r\n".encode())
    assert b"BODY" not in proto.data_to_send()


def test_smtputf8() -> None:
    proto = session(b"250-mx.test\r\n250 SMTPUTF8\r\n")
    proto.start_transaction("a@x.test", ["bö@x.test"], b"Hi")
    assert proto.data_to_send().startswith(b"MAIL FROM:<a@x.test> SMTPUTF8\r\n")
    with pytest.raises(SmtpUtf8Unsupported):
        session().start_transaction("a@x.test", ["bö@x.test"], b"Hi")
    with pytest.raises(SmtpUtf8Unsupported):
        session().start_transaction("a@x.test", ["b@x.test"], b"Hi", smtputf8=True)


@pytest.mark.parametrize("addr", ["b@x.test>\r\nRCPT TO:<c@x.test", "b\n@x.test", "<b@x.test"])
def test_addresses_cannot_inject_commands(addr: str) -> None:
    with pytest.raises(InvalidAddress):
        session().start_transaction("a@x.test", [addr], b"Hi")


def test_long_line_is_refused_before_sending() -> None:
    proto = session()
    with pytest.raises(LineTooLong) as info:
        proto.start_transaction("a@x.test", ["b@x.test"], b"x" * 999 + b"\r\n")
    assert info.value.scope is Scope.MESSAGE
    assert proto.data_to_send() == b""


# -- large bodies: streamed in pieces after 354 ------------------------------------------

EHLO_BIG = b"250-mx.test\r\n250-PIPELINING\r\n250 SIZE 40000000\r\n"
LINE = b"x" * 78 + b"\r\n"


def large_body(size: int) -> bytes:
    """Lines of 80 octets, with a "." line at the start of every chunk (the first too)."""
    lines, rest = divmod(BODY_CHUNK - 3, len(LINE))
    chunk = b".\r\n" + LINE * lines + b"x" * (rest - 2) + b"\r\n"
    assert len(chunk) == BODY_CHUNK
    return chunk * (size // BODY_CHUNK)


def pull(proto: ClientProtocol) -> list[bytes | memoryview]:
    pieces = []
    while proto.body_pending:
        if piece := proto.next_body_piece():
            pieces.append(piece)
    return pieces


def test_large_body_is_pulled_in_pieces_after_354() -> None:
    body = large_body(3 * STREAM_ABOVE)
    proto = session(EHLO_BIG)
    proto.start_transaction("a@x.test", ["b@x.test"], body)
    assert proto.data_to_send().startswith(b"MAIL FROM:<a@x.test> SIZE=%d\r\n" % len(body))
    assert not proto.body_pending
    proto.receive_data(OK_MAIL + OK_RCPT + GO_AHEAD)
    assert proto.data_to_send() == b""  # the body is not in one bytes object
    assert proto.body_pending and proto.stage is Stage.BODY
    pieces = pull(proto)
    assert b"".join(pieces) == encode_data(body)
    assert len(pieces) == len(body) // BODY_CHUNK + 1  # the chunks, then the terminator
    assert max(map(len, pieces)) == BODY_CHUNK + 1  # + the stuffed dot
    assert proto.next_body_piece() == b""
    proto.receive_data(QUEUED)
    assert done(proto).delivered == ["b@x.test"]


def test_body_up_to_the_threshold_is_one_write() -> None:
    line = b"x" * 998 + b"\r\n"
    for body, streamed in [(line * 1000, False), (line * 1100, True)]:
        assert (len(body) > STREAM_ABOVE) is streamed
        proto = session(EHLO_BIG)
        proto.start_transaction("a@x.test", ["b@x.test"], body)
        proto.data_to_send()
        proto.receive_data(OK_MAIL + OK_RCPT + GO_AHEAD)
        assert proto.data_to_send() == (b"" if streamed else body + b".\r\n")
        assert proto.body_pending is streamed


def test_large_body_checked_before_anything_is_sent() -> None:
    proto = session(EHLO_BIG)
    long_line = large_body(2 * STREAM_ABOVE) + b"y" * 999 + b"\r\n"
    with pytest.raises(LineTooLong):
        proto.start_transaction("a@x.test", ["b@x.test"], long_line)
    proto = session()  # SIZE 10000
    with pytest.raises(MessageTooBig):
        proto.start_transaction("a@x.test", ["b@x.test"], large_body(2 * STREAM_ABOVE))
    assert proto.data_to_send() == b""


def test_reply_before_the_end_of_a_large_body_ends_the_session() -> None:
    proto = session(EHLO_BIG)
    proto.start_transaction("a@x.test", ["b@x.test"], large_body(2 * STREAM_ABOVE))
    proto.receive_data(OK_MAIL + OK_RCPT + GO_AHEAD)
    proto.next_body_piece()
    with pytest.raises(ProtocolError) as info:
        proto.receive_data(b"554 5.3.4 message too big\r\n")
    assert info.value.reply is not None and info.value.reply.code == 554
    assert not proto.is_open and not proto.body_pending


def test_eof_mid_body_is_connection_lost_and_drops_the_rest() -> None:
    proto = session(EHLO_BIG)
    proto.start_transaction("a@x.test", ["b@x.test"], large_body(2 * STREAM_ABOVE))
    proto.receive_data(OK_MAIL + OK_RCPT + GO_AHEAD)
    proto.next_body_piece()
    with pytest.raises(ConnectionLost) as info:
        proto.receive_eof()
    assert info.value.stage is Stage.BODY and not proto.body_pending


def test_error_scopes() -> None:
    assert Timeout("t", stage=Stage.CONNECT).scope is Scope.SITE
    assert Timeout("t", stage=Stage.GREETING).scope is Scope.SITE
    assert Timeout("t", stage=Stage.RCPT).scope is Scope.SESSION
    assert ConnectionLost("l", stage=Stage.BODY).scope is Scope.SESSION
    reply = Reply.from_lines(421, ("4.7.0 busy",))
    err = ServiceClosing(str(reply), stage=Stage.MAIL, reply=reply)
    assert err.response == "421 4.7.0 busy" and err.throttled


# -- byte-boundary independence of the whole session ---------------------------------

# The server's bytes in three phases; the client acts between them (starts a transaction
# once established, quits once it is done). Within a phase, replies may arrive early even
# in lock-step: each reply releases the next command before the next reply is read.
HANDSHAKE = GREETING + EHLO_PIPE
TRANSACTION = OK_MAIL + UNKNOWN + b"250-2.1.5 multi\r\n250 2.1.5 line\r\n" + GO_AHEAD + QUEUED
GOODBYE = b"221 2.0.0 Bye\r\n"


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(min(c, len(data)) for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def drive(phases: list[list[bytes]]) -> tuple[bytes, list[Event]]:
    proto = ClientProtocol("me.test")
    sent, seen = b"", []
    actions: list[Callable[[], None]] = [
        lambda: proto.start_transaction("a@x.test", ["b@x.test", "c@x.test"], b".dot\n"),
        proto.quit,
        lambda: None,
    ]
    for chunks, action in zip(phases, actions, strict=True):
        for chunk in chunks:
            proto.receive_data(chunk)
            sent += proto.data_to_send()
            seen += events(proto)
        action()
        sent += proto.data_to_send()
    return sent, seen


@pytest.mark.parametrize("ehlo", [EHLO_PIPE, EHLO_PLAIN])
@given(
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=20),
    cuts2=st.lists(st.integers(min_value=0, max_value=20), max_size=4),
)
@settings(max_examples=150, deadline=None)
def test_session_does_not_depend_on_packet_boundaries(
    ehlo: bytes, cuts: list[int], cuts2: list[int]
) -> None:
    handshake = HANDSHAKE.replace(EHLO_PIPE, ehlo)
    whole = drive([[handshake], [TRANSACTION], [GOODBYE]])
    pieces = [split(handshake, cuts), split(TRANSACTION, cuts), split(GOODBYE, cuts2)]
    assert drive(pieces) == whole
    sent, seen = whole
    assert b"\r\n..dot\r\n.\r\n" in sent
    assert [type(e) for e in seen] == [Established, TransactionDone, Closed]
    tx = seen[1]
    assert isinstance(tx, TransactionDone) and tx.transaction.delivered == ["c@x.test"]


def test_byte_by_byte() -> None:
    phases = [HANDSHAKE, TRANSACTION, GOODBYE]
    one_by_one = [[p[i : i + 1] for i in range(len(p))] for p in phases]
    assert drive(one_by_one) == drive([[p] for p in phases])
