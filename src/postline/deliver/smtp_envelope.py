"""The envelope on the wire (client side): address checks and the MAIL parameters.

Decided for each message before anything is written, so that a refusal here (a
:class:`~postline.deliver.errors.MessageError`) leaves the session usable:

- an address with a control character or an angle bracket would break its command line:
  :class:`~postline.deliver.errors.InvalidAddress`;
- SMTPUTF8 (RFC 6531) when the caller asks for it or an address is not ASCII. Addresses
  arrive with their domain as an A-label (IDNA2008), so only a non-ASCII local part needs
  it; not offered by the server: :class:`~postline.deliver.errors.SmtpUtf8Unsupported`;
- SIZE= (RFC 1870) when offered, refused locally when over the advertised limit
  (:class:`~postline.deliver.errors.MessageTooBig`); BODY=8BITMIME (RFC 6152) for 8-bit
  content when offered.

Pure functions of the server's EHLO extensions; the commands themselves are built and
sent by :class:`~postline.deliver.smtp_protocol.ClientProtocol`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from postline.deliver.errors import InvalidAddress, MessageTooBig, SmtpUtf8Unsupported

__all__ = ["mail_params", "need_smtputf8"]

_BAD_ADDRESS = re.compile(r"[\x00-\x1f<>\x7f]")


def need_smtputf8(
    mail_from: str, rcpts: list[str], requested: bool, extensions: Mapping[str, str]
) -> bool:
    """Whether MAIL needs SMTPUTF8; raises when an address is unusable or it is not offered."""
    for addr in (mail_from, *rcpts):
        if _BAD_ADDRESS.search(addr):
            raise InvalidAddress(f"invalid characters in address {addr!r}")
    needed = requested or not (mail_from.isascii() and all(r.isascii() for r in rcpts))
    if needed and "SMTPUTF8" not in extensions:
        raise SmtpUtf8Unsupported("SMTPUTF8 is required, but was not offered by the host")
    return needed


def mail_params(size: int, payload: bytes, utf8: bool, extensions: Mapping[str, str]) -> bytes:
    """The parameters after ``MAIL FROM:<...>``, each with its leading space."""
    params = b""
    if "SIZE" in extensions:
        limit = int(extensions["SIZE"]) if extensions["SIZE"].isdigit() else 0
        if limit and size > limit:
            raise MessageTooBig(f"message size {size} exceeds size limit {limit} of server")
        params += b" SIZE=%d" % size
    if "8BITMIME" in extensions and not payload.isascii():
        params += b" BODY=8BITMIME"
    if utf8:
        params += b" SMTPUTF8"
    return params
