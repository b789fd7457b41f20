"""The SMTP server machine under random input: it never raises, its replies are always
well-formed, packet boundaries change nothing, and no byte sequence inside a message's
data (the SMTP smuggling probes) ends it early or starts a second transaction."""

from __future__ import annotations

import base64
import itertools
import re

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from postline.deliver.replies import ReplyParser
from postline.smtp import replies as r
from postline.smtp.events import (
    AuthRequest,
    CloseConnection,
    DataChunk,
    Event,
    Limits,
    MessageAborted,
    MessageComplete,
    MessageRefused,
    MessageStart,
    SessionPolicy,
    StartTls,
)
from postline.smtp.protocol import ServerProtocol

pytestmark = pytest.mark.timeout(120)

POLICY = SessionPolicy("mx.test", plaintext_auth=True)
LIMITS = Limits(
    max_message_size=64, max_recipients=3, max_errors=40, max_command_line=64, max_auth_line=96
)
CREDS = base64.b64encode(b"\0apikey\0secret")

TOKENS = [
    b"EHLO c\r\n", b"HELO c\r\n", b"MAIL FROM:<a@x.test>\r\n", b"MAIL FROM:<a@x.test> SIZE=9\r\n",
    b"RCPT TO:<b@y.test>\r\n", b"DATA\r\n", b"RSET\r\n", b"NOOP\r\n", b"QUIT\r\n",
    b"STARTTLS\r\n", b"AUTH PLAIN " + CREDS + b"\r\n", b"AUTH PLAIN\r\n", CREDS + b"\r\n",
    b"AUTH LOGIN\r\n", b"YXBpa2V5\r\n", b"c2VjcmV0\r\n", b"*\r\n", b"\r\n.\r\n", b".\r\n",
    b"\n.\r\n", b"\r.\r\n", b"\r\n.\n", b"\r\n", b"\n", b"\r", b".", b"..", b"x", b"\xc3\xa9",
    b"\x00", b"y" * 70, b"AUTH PLAIN " + b"A" * 100,
]  # fmt: skip
IN_DATA = b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"
streams = st.one_of(
    st.lists(st.sampled_from(TOKENS), max_size=40).map(b"".join),
    st.lists(st.sampled_from(TOKENS), max_size=40).map(lambda t: IN_DATA + b"".join(t)),
    st.binary(max_size=300),
)
WELL_FORMED = re.compile(rb"(\d{3})([ -])[^\r\n]*")


def drive(chunks: list[bytes], policy: SessionPolicy = POLICY) -> tuple[list[Event], bytes]:
    """Run a session, answering the machine's questions as an adapter would."""
    proto = ServerProtocol(policy, LIMITS)
    events: list[Event] = []
    out = [proto.bytes_to_send()]

    def drain() -> None:
        while (event := proto.next_event()) is not None:
            events.append(event)
            if isinstance(event, AuthRequest):
                proto.auth_result(event.password == "secret")
            elif isinstance(event, MessageComplete):
                proto.accept_message("Q")
            elif isinstance(event, StartTls):
                proto.tls_started()
            out.append(proto.bytes_to_send())

    for chunk in chunks:
        proto.receive_data(chunk)
        drain()
        out.append(proto.bytes_to_send())
    proto.receive_eof()
    drain()
    return events, b"".join(out)


def outcomes(events: list[Event]) -> list[object]:
    """Events with each message's chunks joined (chunks follow packet boundaries) and the
    chunks of a refused or aborted message dropped (the adapter discards them)."""
    result: list[object] = []
    body: list[bytes] = []
    for event in events:
        if isinstance(event, MessageStart):
            body = []
            result.append(event)
        elif isinstance(event, DataChunk):
            body.append(event.data)
        elif isinstance(event, MessageComplete):
            result += [b"".join(body), event]
        else:
            result.append(event)
    return result


def check_replies(wire: bytes) -> None:
    assert not wire or wire.endswith(b"\r\n")
    lines = wire.split(b"\r\n")[:-1]
    for line in lines:
        assert WELL_FORMED.fullmatch(line), line
    ReplyParser().feed(wire)  # raises on a multiline reply that changes its code


@given(streams)
@example(b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n\r.\r\n\r\n.\r\n")
@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_never_raises_and_replies_are_well_formed(stream: bytes) -> None:
    for policy in (POLICY, SessionPolicy("h", trusted=True, tls_available=True)):
        events, wire = drive([stream], policy)
        check_replies(wire)
        assert sum(isinstance(e, CloseConnection) for e in events) <= 1


@given(streams, st.lists(st.integers(min_value=0, max_value=400), max_size=10))
@settings(max_examples=500, deadline=None)
def test_packet_boundaries_change_nothing(stream: bytes, cuts: list[int]) -> None:
    # Without STARTTLS: what follows it in the same packet is dropped on purpose.
    policy = SessionPolicy("mx.test", plaintext_auth=True, trusted=True)
    whole_events, whole_wire = drive([stream], policy)
    bounds = [0, *sorted(c for c in cuts if c <= len(stream)), len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    events, wire = drive(chunks, policy)
    assert wire == whole_wire
    assert outcomes(events) == outcomes(whole_events)


DATA_TOKENS = [
    b"\n.\r\n", b"\r.\r\n", b"\r\n.\n", b"\n.\n", b"\r\n.\r", b"\n", b"\r", b"\r\n", b".",
    b"..", b"x", b"MAIL FROM:<e@x.test>\r\n", b"RCPT TO:<v@y.test>\r\n", b"DATA\r\n",
]  # fmt: skip
ENVELOPE = b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"


def unstuff(content: bytes) -> bytes:
    return (b"\r\n" + content).replace(b"\r\n.", b"\r\n")[2:]


@given(
    st.lists(st.sampled_from(DATA_TOKENS), max_size=30).map(b"".join),
    st.lists(st.integers(min_value=0, max_value=200), max_size=6),
)
@example(b"text\n.\r\nMAIL FROM:<e@x.test>\r\nRCPT TO:<v@y.test>\r\nDATA\r\n", [])
@example(b"\r.\r\nMAIL FROM:<e@x.test>\r\n", [])
@example(b"x\r\n.\nDATA\r\n", [])
@settings(max_examples=800, deadline=None)
def test_data_ends_only_at_a_true_terminator(payload: bytes, cuts: list[int]) -> None:
    """One DATA, one message: it ends at the first CRLF.CRLF and is either delivered
    exactly or refused; nothing in it ever becomes a command or a second message."""
    assume((b"\r\n" + payload + b"\r\n.\r\n").find(b"\r\n.\r\n") == len(payload) + 2)
    stream = ENVELOPE + payload + b"\r\n.\r\nQUIT\r\n"
    bounds = [0, *sorted(c for c in cuts if c <= len(stream)), len(stream)]
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    events, wire = drive(chunks, SessionPolicy("mx.test", trusted=True))
    content = payload + b"\r\n"
    clean = content.count(b"\r") == content.count(b"\n") == content.count(b"\r\n")
    body = unstuff(content)
    result = outcomes(events)
    start = result[0]
    assert isinstance(start, MessageStart)
    assert sum(isinstance(e, MessageStart) for e in result) == 1
    if clean and len(body) <= LIMITS.max_message_size:
        assert result[1:3] == [body, MessageComplete(start.envelope, len(body))]
    elif clean:
        assert result[1] == MessageRefused(r.S552_TOO_BIG)
    else:
        assert result[1] == MessageRefused(r.S554_BARE_NEWLINE)
    assert result[-1] == CloseConnection(r.S221_BYE)
    assert not any(isinstance(e, MessageAborted) for e in result)
    assert wire.endswith(b"\r\n221 2.0.0 Bye\r\n")
