"""HTTP errors in SendGrid's shape: ``{"errors": [{"message", "field", "help"}]}``.

An :class:`HttpError` carries the response it implies; handlers raise it, the router turns
it into the response. Messages follow SendGrid's OpenAPI examples (tsg_mail_v3.json).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from postline.api.types import Response
from postline.model.errors import FieldError

_encode = msgspec.json.Encoder().encode


def error_body(errors: Sequence[FieldError]) -> bytes:
    return _encode({"errors": [e.as_json() for e in errors]})


class HttpError(Exception):
    def __init__(
        self,
        status: int,
        errors: Sequence[FieldError],
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(errors[0].message if errors else str(status))
        self.status = status
        self.errors = list(errors)
        self.headers = headers or []

    def response(self) -> Response:
        return Response(self.status, error_body(self.errors), list(self.headers))


def http_error(status: int, message: str, field: str | None = None) -> HttpError:
    return HttpError(status, [FieldError(message, field)])


def unauthorized(message: str = "authorization required") -> HttpError:
    return http_error(401, message)


def forbidden() -> HttpError:
    return http_error(403, "access forbidden")


def not_found() -> HttpError:
    return http_error(404, "not found")


def method_not_allowed() -> HttpError:
    return http_error(405, "method not allowed")


def too_large() -> HttpError:
    return http_error(413, "content too large")


def unavailable(reason: str, retry_after: int) -> HttpError:
    err = http_error(503, f"service unavailable: {reason}; retry later")
    err.headers.append(("Retry-After", str(retry_after)))
    return err
