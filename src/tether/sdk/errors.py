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

from collections.abc import Mapping
from typing import Any

import httpx

from tether.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    TetherError,
    Unauthenticated,
    Unavailable,
)
from tether.model import Reason

__all__ = ["ApprovalRequired", "ApprovalTimeout", "Denied", "NoActiveTask", "error_from_response"]


class Denied(Forbidden):
    """The broker decided ``deny`` for one action."""

    default_code = "denied"

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

    default_code = "approval_required"

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
    default_code = "approval_timeout"


class NoActiveTask(Forbidden):
    default_code = "no_active_task"


_BY_STATUS: dict[int, type[TetherError]] = {
    400: InvalidRequest,
    401: Unauthenticated,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: InvalidRequest,
}


def error_from_response(response: httpx.Response) -> TetherError:
    """Turn a broker error response into the matching ``TetherError`` with the broker's code."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, Mapping) or not isinstance(body.get("code"), str):
        return Unavailable(
            f"the broker answered HTTP {response.status_code} without an error body; check the broker URL",
            code="bad_broker_response",
            status=response.status_code,
        )
    code = str(body["code"])
    message = str(body.get("message") or code)
    details = {k: v for k, v in body.items() if k not in ("code", "message")}
    cls = _BY_STATUS.get(response.status_code, Unavailable)
    return cls(message, code=code, **details)
