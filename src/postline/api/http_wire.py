"""Bytes on the wire for the HTTP server: responses, and the refusals it gives itself.

Every refusal is SendGrid's error shape with ``Connection: close``; the messages say what
the client should send instead.
"""

from __future__ import annotations

from http import HTTPStatus

from postline.api.errors import error_body, too_large
from postline.api.types import Response
from postline.config import HttpConfig
from postline.model.errors import FieldError

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def encode_response(resp: Response, keep_alive: bool) -> bytes:
    head = [b"HTTP/1.1 %d %s\r\n" % (resp.status, _REASONS.get(resp.status, b"Unknown"))]
    if resp.content_type and resp.body:
        head.append(b"Content-Type: %s\r\n" % resp.content_type.encode())
    for name, value in resp.headers:
        head.append(f"{name}: {value}\r\n".encode("latin-1"))
    head.append(b"Content-Length: %d\r\n" % len(resp.body))
    if not keep_alive:
        head.append(b"Connection: close\r\n")
    head.append(b"\r\n")
    return b"".join(head) + resp.body


def error(status: int, message: str) -> Response:
    return Response(status, error_body([FieldError(message)]))


def over_capacity() -> bytes:
    """The whole answer to a connection over a connection cap."""
    resp = error(503, "too many open connections: reuse keep-alive connections, retry later")
    resp.headers.append(("Retry-After", "1"))
    return encode_response(resp, keep_alive=False)


def url_too_long(cfg: HttpConfig) -> Response:
    return error(414, f"URL too long: send at most {cfg.max_request_line} bytes of URL")


def headers_too_large(cfg: HttpConfig) -> Response:
    return error(
        431,
        f"request header fields too large: send at most {cfg.max_headers} header lines, "
        f"each at most {cfg.max_header_line} bytes, {cfg.max_header_bytes} bytes in all",
    )


def content_too_large() -> Response:
    return too_large().response()


def host_required() -> Response:
    return error(400, "send exactly one Host header: HTTP/1.1 requires it (RFC 9112 3.2)")


def malformed() -> Response:
    return error(400, "malformed HTTP request: send HTTP/1.1 (RFC 9112)")


def no_upgrade() -> Response:
    return error(400, "protocol upgrade and CONNECT are not supported: send plain HTTP/1.1")


def timed_out(cfg: HttpConfig, what: str) -> Response:
    seconds = cfg.header_timeout if what == "headers" else cfg.body_timeout
    return error(408, f"request timeout: send the request {what} within {seconds:g} s")


def server_error() -> Response:
    return error(500, "internal server error")
