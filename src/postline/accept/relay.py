"""The SMTP relay's accept path: a message as it arrives → one durable :class:`AcceptBatch`.

The HTTP door builds a batch from a JSON request (api/mail_send.py); this one from the
bytes of one DATA. The adapter (smtp/session.py) calls :meth:`RelayIntake.begin` at DATA,
:meth:`Incoming.write` with every chunk, :meth:`Incoming.finish` at the final dot (→ the
queue id for the 250, or :class:`Refused` with the reply) and :meth:`Incoming.discard`
always at the end.

- **Streamed, never copied whole.** The header section (at most ``max_header_bytes``) is
  buffered until it ends, rewritten (accept/relay_headers.py: Received first, X-SMTPAPI
  removed, Message-ID / Date / From added when missing) and written out; every later chunk
  goes straight on. Up to ``SPILL_BYTES`` the message stays in memory; beyond, it goes to
  a file in ``<data_dir>/incoming`` that the spool copies in bounded chunks
  (spool/interface.py ``BodyFile``). A 30 MB message costs the node one 64 KiB read
  buffer here, not 30 MB.
- **One message per X-SMTPAPI ``to`` address** (its own To header, ``sub`` values and
  ``send_each_at``), sharing the one stored body; RCPT TO addresses not in ``to`` get the
  message as received. Without ``to``: one message for every RCPT TO.
- **Same rules as HTTP after that:** suppressed recipients are dropped with SendGrid's
  reason (by the spool, inside the accept transaction: spool/drops.py), one processed or
  dropped event per recipient with the X-SMTPAPI categories and unique_args, nothing is
  acknowledged before the spool's commit (a spool that cannot write is 452 and nothing is
  kept).
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from postline.accept.relay_headers import (
    HeaderError,
    HeaderInfo,
    header_end,
    prepare_headers,
    received_field,
)
from postline.accept.smtpapi import SmtpApi, SmtpApiError, parse_smtpapi, smtp_reply
from postline.deliver.render_headers import format_date
from postline.model.domain import email_key
from postline.model.events import PROCESSED, EventRecord, make_event, message_meta
from postline.model.ids import new_x_message_id, sg_message_id, smtp_id
from postline.model.relay import RelayMessage, encode_relay
from postline.smtp.events import Envelope
from postline.spool.interface import (
    AcceptBatch,
    BodyFile,
    NewMessage,
    SpoolUnavailable,
    UnknownGroups,
)

Accept = Callable[[AcceptBatch], Awaitable[None]]

SPILL_BYTES = 256 * 1024  # larger messages go to a file while they arrive
INCOMING = "incoming"  # <data_dir>/incoming: the files of messages being received
S452_STORAGE_FULL = "452 4.3.1 Insufficient system storage: {reason}; try again later"


MAX_LINE = 998  # octets without CRLF (RFC 5322 2.1.1); KumoMTA's line_length_hard_limit
S554_LINE_TOO_LONG = (
    "554 5.6.0 Message has a line longer than 998 octets (RFC 5322 section 2.1.1); wrap long "
    "lines, or send the part quoted-printable or base64"
)


def longest(data: bytes, start: int, end: int) -> int:
    """The longest LF-separated piece of data[start:end] (each with its CR), in C: a slice
    of a memoryview, one split, lengths."""
    if end - start <= MAX_LINE + 1:
        return end - start
    return max(map(len, memoryview(data)[start:end].tobytes().split(b"\n")))


S550_UNKNOWN_GROUP = "550 5.6.0"  # with the X-SMTPAPI key and the missing groups


def _unknown_groups(batch: AcceptBatch, exc: UnknownGroups) -> str:
    """The 550 naming the key whose group does not exist (the group itself first)."""
    key = "asm_group_id" if batch.asm_group_id in exc.group_ids else "asm_groups_to_display"
    ids = ", ".join(map(str, exc.group_ids))
    return smtp_reply(S550_UNKNOWN_GROUP, f"X-SMTPAPI {key}: no unsubscribe group {ids}")


class Refused(Exception):
    """The message is not taken; ``reply`` is the complete SMTP reply (4xx or 5xx)."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


class RelayIntake:
    def __init__(
        self,
        *,
        accept: Accept,
        node: str,
        hostname: str,
        message_id_host: str,
        max_age: float,
        max_header_bytes: int,
        data_dir: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.accept = accept
        self.node = node
        self.hostname = hostname
        self.message_id_host = message_id_host
        self.max_age = max_age
        self.max_header_bytes = max_header_bytes
        self.clock = clock
        self.incoming = Path(data_dir) / INCOMING
        self.incoming.mkdir(exist_ok=True)
        for left in self.incoming.iterdir():  # a crash mid-DATA: never acknowledged
            with contextlib.suppress(OSError):
                left.unlink()

    def begin(self, env: Envelope, *, tenant: str, client_ip: str, protocol: str) -> Incoming:
        return Incoming(self, env, tenant, client_ip, protocol)


class Incoming:
    """One message being received."""

    def __init__(
        self, intake: RelayIntake, env: Envelope, tenant: str, client_ip: str, protocol: str
    ) -> None:
        self.intake = intake
        self.env = env
        self.tenant = tenant
        self.x_id = new_x_message_id()
        self.now = intake.clock()
        self._received = received_field(
            helo=env.helo,
            client_ip=client_ip,
            client_host=None,
            hostname=intake.hostname,
            protocol=protocol,
            queue_id=self.x_id,
            recipient=env.recipients[0] if len(env.recipients) == 1 else None,
            when=self.now,
        )
        self._head = bytearray()  # the header section until it is complete
        self._info: HeaderInfo | None = None
        self._refusal: str | None = None
        self._eight_bit = False
        self._line = 0  # octets of the line being received
        self._body = _Spooled(intake.incoming, SPILL_BYTES)

    def write(self, chunk: bytes) -> None:
        if self._refusal is not None:
            return  # the rest of a refused message is read and dropped
        if not self._eight_bit and not chunk.isascii():
            self._eight_bit = True
        if not self._lines_fit(chunk):
            self._refusal = S554_LINE_TOO_LONG
            self._head = bytearray()
            return
        if self._info is not None:
            self._body.write(chunk)
            return
        self._head += chunk
        end = header_end(bytes(self._head), final=False)
        if end is not None:
            self._end_header(end)
        elif len(self._head) > self.intake.max_header_bytes:
            self._refuse_header()

    async def finish(self) -> str:
        """Store the message durably; its queue id (the X-Message-Id) for the 250."""
        if self._info is None and self._refusal is None:
            end = header_end(bytes(self._head), final=True)
            self._end_header(end if end is not None else (len(self._head), len(self._head)))
        if self._refusal is not None:
            raise Refused(self._refusal)
        assert self._info is not None
        api = None
        if self._info.smtpapi is not None:
            try:
                api = parse_smtpapi(self._info.smtpapi, now=self.now)
            except SmtpApiError as exc:
                raise Refused(exc.reply) from None
        batch = await self._batch(self._info, api)
        try:
            await self.intake.accept(batch)
        except SpoolUnavailable as exc:
            raise Refused(S452_STORAGE_FULL.format(reason=_ascii(exc.reason))) from None
        except UnknownGroups as exc:
            raise Refused(_unknown_groups(batch, exc)) from None
        return self.x_id

    def discard(self) -> None:
        self._body.discard()
        self._head = bytearray()

    def _lines_fit(self, chunk: bytes) -> bool:
        """No line over 998 octets (the protocol lets only CRLF end a line, so each LF
        closes a line whose CR is counted here too); the partial last line carries over."""
        last = chunk.rfind(b"\n")
        if last < 0:
            self._line += len(chunk)
            return self._line <= MAX_LINE + 1  # + the CR that may end the chunk
        first = chunk.find(b"\n")
        if self._line + first > MAX_LINE + 1:
            return False
        self._line = len(chunk) - last - 1
        if last > first and longest(chunk, first + 1, last) > MAX_LINE + 1:
            return False
        return self._line <= MAX_LINE + 1

    # -- internals ------------------------------------------------------------------------

    def _refuse_header(self) -> None:
        limit = self.intake.max_header_bytes
        self._refusal = (
            f"552 5.3.4 Message header section exceeds {limit} bytes; send fewer or shorter "
            "header fields"
        )
        self._head = bytearray()

    def _end_header(self, end: tuple[int, int]) -> None:
        head = bytes(self._head)
        self._head = bytearray()
        section = head[: end[0]]
        if len(section) > self.intake.max_header_bytes:
            return self._refuse_header()
        try:
            new_section, info = prepare_headers(
                section,
                received=self._received,
                envelope_sender=self.env.mail_from,
                message_id=smtp_id(self.x_id, 0, self._id_host()),
                date=format_date(self.now),
            )
        except HeaderError as exc:
            self._refusal = exc.reply
            return
        self._info = info
        self._body.write(new_section)
        self._body.write(b"\r\n")
        self._body.write(head[end[1] :])

    def _id_host(self) -> str:
        host = self.intake.message_id_host
        return host or self.env.mail_from.rpartition("@")[2] or self.intake.hostname

    async def _batch(self, info: HeaderInfo, api: SmtpApi | None) -> AcceptBatch:
        base = RelayMessage(
            mail_from=self.env.mail_from,
            from_domain=info.from_domain,
            categories=api.categories if api else None,
            unique_args=api.unique_args if api else None,
            smtputf8=self.env.smtputf8,
            eight_bit=self._eight_bit or info.eight_bit,
        )
        plan = _plan(self.env.recipients, base, api)
        messages: list[NewMessage] = []
        events: list[EventRecord] = []
        group = api.asm_group_id if api else None
        meta = message_meta(info.from_addr, info.subject, None, group)
        for i, (rm, rcpts, send_at) in enumerate(plan):
            sg_id = sg_message_id(self.x_id, self.intake.node, i)
            events += [
                make_event(
                    PROCESSED,
                    tenant=self.tenant,
                    email=email,
                    ts=self.now,
                    sg_message_id=sg_id,
                    smtp_id=info.message_id,
                    categories=rm.categories,
                    custom_args=rm.unique_args,
                    extra={"send_at": send_at or 0},
                    meta=meta,
                )
                for email in rcpts
            ]
            due = max(self.now, float(send_at)) if send_at else self.now
            messages.append(NewMessage(sg_id, info.message_id, encode_relay(rm), rcpts, due))
        body, body_file = self._body.seal()
        return AcceptBatch(
            self.tenant,
            body,
            messages,
            events,
            created_at=self.now,
            expires_at=self.now + self.intake.max_age,
            body_file=body_file,
            drop_suppressed=True,  # the spool drops them in its transaction (spool/drops.py)
            asm_group_id=group,  # and the group's unsubscribes
            asm_groups_to_display=api.asm_groups_to_display if api else (),
        )


Plan = list[tuple[RelayMessage, list[str], int | None]]


def _plan(rcpt_to: Sequence[str], base: RelayMessage, api: SmtpApi | None) -> Plan:
    """The messages of one DATA: (per-message fields, recipients, send_at)."""
    send_at = api.send_at if api else None
    if api is None or not api.to:
        section = api.section if api else None
        return [(_with(base, section=section), _unique(rcpt_to), send_at)] if rcpt_to else []
    plan: Plan = []
    seen: set[str] = set()
    for i, (header, addr) in enumerate(api.to):
        key = email_key(addr)
        if key in seen:
            continue
        seen.add(key)
        sub = {tag: values[i] for tag, values in api.sub.items()} if api.sub else None
        each = api.send_each_at[i] if api.send_each_at else send_at
        utf8 = base.smtputf8 or not addr.rpartition("@")[0].isascii()  # RFC 6531 needed
        rm = _with(base, to_header=header, sub=sub, section=api.section, smtputf8=utf8)
        plan.append((rm, [addr], each))
    rest = [a for a in _unique(rcpt_to) if email_key(a) not in seen]
    if rest:  # RCPT TO beside X-SMTPAPI "to": SendGrid sends these the message as it came
        plan.append((base, rest, send_at))
    return plan


def _with(base: RelayMessage, **changes: object) -> RelayMessage:
    fields = {f: getattr(base, f) for f in RelayMessage.__struct_fields__}
    fields.update({k: v for k, v in changes.items() if v})
    return RelayMessage(**fields)


def _unique(addrs: Sequence[str]) -> list[str]:
    seen: dict[str, str] = {}
    for a in addrs:
        seen.setdefault(email_key(a), a)
    return list(seen.values())


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii").replace("\r", " ").replace("\n", " ")


class _Spooled:
    """The message as written: in memory up to ``spill`` bytes, then in a file."""

    def __init__(self, directory: Path, spill: int) -> None:
        self._dir = directory
        self._spill = spill
        self._buf = bytearray()
        self._file: BinaryIO | None = None
        self._path: Path | None = None
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self._file is not None:
            self._file.write(data)
            return
        self._buf += data
        if len(self._buf) > self._spill:
            self._path = self._dir / f"{uuid.uuid4().hex}.eml"
            fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self._file = os.fdopen(fd, "wb", buffering=1024 * 1024)
            self._file.write(self._buf)
            self._buf = bytearray()

    def seal(self) -> tuple[bytes, BodyFile | None]:
        """(body, None) when in memory, (b"", the file) when spilled; no fsync: the spool
        copies the file inside its own durable transaction."""
        if self._file is None:
            return bytes(self._buf), None
        self._file.close()
        assert self._path is not None
        return b"", BodyFile(str(self._path), self.size)

    def discard(self) -> None:
        self._buf = bytearray()
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        if self._path is not None:
            with contextlib.suppress(OSError):
                self._path.unlink()
            self._path = None
