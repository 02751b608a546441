"""Every failure Tether reports is a :class:`TetherError` with a stable ``code``.

Callers branch on ``code`` (or on the class), never on message text. Messages are
lowercase, name the field or value at fault in backticks, and say what to do.

    TetherError
    ├── InvalidRequest          400  malformed input, unknown field, bad SPIFFE ID
    │   └── PayloadTooLarge     413  body or header over its limit
    ├── Unauthenticated         401  missing, forged, expired or untrusted credential
    ├── Forbidden               403  authenticated but not allowed (scope, attenuation)
    ├── NotFound                404  unknown task, approval, delegation
    ├── Conflict                409  state does not allow it (task closed, delegation used)
    ├── TooManyRequests         429  a per-caller cap reached (concurrent long-polls)
    ├── ConfigError             —    invalid configuration; the process refuses to start
    ├── PolicyError             —    policy set invalid; refused, previous set stays
    └── Unavailable             503  store, audit or connector down: fail closed
"""

from __future__ import annotations

from typing import Any, ClassVar


class TetherError(Exception):
    """Root of every error Tether raises on purpose."""

    status: ClassVar[int] = 500
    default_code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        body.update(self.details)
        return body

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidRequest(TetherError):
    status = 400
    default_code = "invalid_request"


class PayloadTooLarge(InvalidRequest):
    status = 413
    default_code = "payload_too_large"


class Unauthenticated(TetherError):
    status = 401
    default_code = "unauthenticated"


class Forbidden(TetherError):
    status = 403
    default_code = "forbidden"


class NotFound(TetherError):
    status = 404
    default_code = "not_found"


class Conflict(TetherError):
    status = 409
    default_code = "conflict"


class TooManyRequests(TetherError):
    status = 429
    default_code = "too_many_requests"


class ConfigError(TetherError):
    status = 500
    default_code = "config_invalid"


class PolicyError(TetherError):
    status = 500
    default_code = "policy_invalid"


class Unavailable(TetherError):
    status = 503
    default_code = "unavailable"
