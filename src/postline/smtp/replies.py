"""The SMTP relay's replies, named after their code (aiosmtpd's habit: ``S250_OK``).

Every 2xx/4xx/5xx reply carries an enhanced status code (RFC 3463) because the relay
advertises ENHANCEDSTATUSCODES (RFC 2034); 3xx replies have none (RFC 3463 has no class 3).
Texts tell the client what to do, as Postfix's do. ``tests/unit/test_smtp_server_protocol.py``
checks that each name agrees with its code and its enhanced code's class.
"""

from __future__ import annotations

# -- 2xx: done ----------------------------------------------------------------------------
S214_HELP = "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY STARTTLS AUTH"
S220_TLS_READY = "220 2.0.0 Ready to start TLS"
S221_BYE = "221 2.0.0 Bye"
S235_AUTH_OK = "235 2.7.0 Authentication successful"
S250_OK = "250 2.0.0 Ok"
S250_SENDER_OK = "250 2.1.0 Ok"
S250_RCPT_OK = "250 2.1.5 Ok"
S252_CANNOT_VRFY = "252 2.0.0 Cannot VRFY user, but will accept message and attempt delivery"

# -- 3xx: go ahead (no enhanced code) -------------------------------------------------------
S334_CHALLENGE = "334 "  # AUTH PLAIN without an initial response: send it now
S334_USERNAME = "334 VXNlcm5hbWU6"  # base64 "Username:" (AUTH LOGIN)
S334_PASSWORD = "334 UGFzc3dvcmQ6"  # base64 "Password:"
S354_END_DATA = "354 End data with <CR><LF>.<CR><LF>"

# -- 4xx: try again later -------------------------------------------------------------------
S421_TOO_MANY_ERRORS = "421 4.7.0 Too many errors, closing connection"
S421_TIMEOUT = "421 4.4.2 Timeout exceeded, closing connection"
S421_SHUTTING_DOWN = "421 4.3.2 Service shutting down, closing connection"
S421_TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections, try again later"
S451_LOCAL_ERROR = "451 4.3.0 Local error in processing, try again later"
S452_TOO_MANY_RCPTS = "452 4.5.3 Too many recipients; send the rest in another message"
S452_STORAGE_FULL = "452 4.3.1 Insufficient system storage, try again later"
S454_TLS_UNAVAILABLE = "454 4.7.0 TLS not available"

# -- 5xx: refused -------------------------------------------------------------------------
S500_LINE_TOO_LONG = "500 5.5.2 Line too long"
S500_UNKNOWN_COMMAND = "500 5.5.2 Command not recognized"
S500_BARE_NEWLINE = "500 5.5.2 Bare <CR> or <LF> in command; end lines with <CR><LF>"
S501_SYNTAX = "501 5.5.4 Syntax error in parameters or arguments"
S501_NO_HOSTNAME = "501 5.5.4 Syntax: EHLO hostname"
S501_BAD_SENDER = "501 5.1.7 Bad sender address syntax"
S501_BAD_RECIPIENT = "501 5.1.3 Bad recipient address syntax"
S501_BAD_PARAMETER = "501 5.5.4 Bad value for a MAIL parameter"
S501_AUTH_CANCELLED = "501 5.7.0 Authentication cancelled"
S501_AUTH_MALFORMED = "501 5.5.2 Cannot decode the authentication response"
S502_NOT_IMPLEMENTED = "502 5.5.1 Command not implemented"
S503_BAD_SEQUENCE = "503 5.5.1 Bad sequence of commands"
S503_NEED_HELO = "503 5.5.1 Send EHLO or HELO first"
S503_NEED_MAIL = "503 5.5.1 Need MAIL command"
S503_NESTED_MAIL = "503 5.5.1 Sender already specified; send RSET first"
S503_AUTH_ACTIVE = "503 5.5.1 Already authenticated"
S503_TLS_ACTIVE = "503 5.5.1 TLS already active"
S504_AUTH_MECHANISM = "504 5.5.4 Unrecognized authentication mechanism; use PLAIN or LOGIN"
S530_AUTH_REQUIRED = "530 5.7.0 Authentication required"
S535_AUTH_FAILED = "535 5.7.8 Authentication credentials invalid"
S538_ENCRYPTION_REQUIRED = "538 5.7.11 Encryption required; send STARTTLS first"
S552_TOO_BIG = "552 5.3.4 Message size exceeds fixed limit"
S553_SMTPUTF8_REQUIRED = "553 5.6.7 Non-ASCII address needs the SMTPUTF8 parameter"
S554_NO_VALID_RCPTS = "554 5.5.1 No valid recipients"
S554_BARE_NEWLINE = (
    "554 5.5.2 Message refused: bare <CR> or <LF> in the data; end every line with <CR><LF>"
)
S555_UNKNOWN_PARAMETER = "555 5.5.4 Unsupported MAIL or RCPT parameter"


def greeting(hostname: str) -> str:
    """The 220 banner; RFC 2034 exempts the greeting from enhanced codes."""
    return f"220 {hostname} ESMTP Postline"


def queued(queue_id: str) -> str:
    return f"250 2.0.0 Ok: queued as {queue_id}"


def encode(reply: str) -> bytes:
    """One reply (possibly multiline, lines joined by CRLF) as sent on the wire."""
    return reply.encode("utf-8") + b"\r\n"


def multiline(code: int, lines: list[str]) -> str:
    """``code-line`` ... ``code line``: the EHLO reply (RFC 5321 §4.2.1)."""
    head = [f"{code}-{line}" for line in lines[:-1]]
    return "\r\n".join([*head, f"{code} {lines[-1]}"])
