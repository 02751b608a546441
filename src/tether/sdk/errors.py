"""What the SDK raises. Every class is a :class:`tether.errors.TetherError` with a ``code``.

    TetherError
    ├── Forbidden
    │   ├── Denied                 policy (or an invariant) said no; carries the decision id
    │   │   └── ApprovalRequired   a human must approve first; carries the approval id
    │   │       └── ApprovalTimeout    nobody approved within the wait
    │   └── NoActiveTask           a guarded tool ran outside ``with client.task(...)``
    └── (the broker's own errors, re-raised with the broker's code and HTTP class:
         InvalidRequest, Unauthenticated, Forbidden, NotFound, Conflict, Unavailable)

``ApprovalRequired`` is a ``Denied``: code that only catches ``Denied`` still stops.
"""

from __future__ import annotations

from typing import Any

import httpx

from tether.errors import ErrorCode, Forbidden, TetherError, Unavailable, error_class
from tether.model import Reason
from tether.sdk import _wire as wire

__all__ = ["ApprovalRequired", "ApprovalTimeout", "Denied", "NoActiveTask", "error_from_response"]


class Denied(Forbidden):
    """The broker decided ``deny`` for one action."""

    default_code = ErrorCode.DENIED

    def __init__(
        self,
        message: str,
        *,
        decision_id: str,
        reasons: tuple[Reason, ...] = (),
        policy_version: str = "",
        code: str | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message, code=code, decision_id=decision_id, **details)
        self.decision_id = decision_id
        self.reasons = reasons
        self.policy_version = policy_version

    @property
    def policy_ids(self) -> tuple[str, ...]:
        return tuple(r.policy_id for r in self.reasons)


class ApprovalRequired(Denied):
    """Policy wants a human's yes first; ``approval_id`` is what the operator approves."""

    default_code = ErrorCode.APPROVAL_REQUIRED

    def __init__(
        self,
        message: str,
        *,
        decision_id: str,
        approval_id: str,
        reasons: tuple[Reason, ...] = (),
        policy_version: str = "",
        code: str | None = None,
        **details: Any,
    ) -> None:
        super().__init__(
            message,
            decision_id=decision_id,
            reasons=reasons,
            policy_version=policy_version,
            code=code,
            approval_id=approval_id,
            **details,
        )
        self.approval_id = approval_id


class ApprovalTimeout(ApprovalRequired):
    default_code = ErrorCode.APPROVAL_TIMEOUT


class NoActiveTask(Forbidden):
    default_code = ErrorCode.NO_ACTIVE_TASK


def error_from_response(response: httpx.Response) -> TetherError:
    """Turn a broker error response into the matching ``TetherError`` with the broker's code."""
    try:
        body = wire.ErrorBody.from_wire(response.json())
    except (ValueError, wire.WireError):
        return Unavailable(
            f"the broker answered HTTP {response.status_code} without an error body; check the broker URL",
            code=ErrorCode.BAD_BROKER_RESPONSE,
            status=response.status_code,
        )
    details = dict(body.extra)
    if body.field is not None:
        details["field"] = body.field
    # The broker's status → class mapping, reversed (one table in ``tether.errors``).
    return error_class(response.status_code)(body.message or body.code, code=body.code, **details)
