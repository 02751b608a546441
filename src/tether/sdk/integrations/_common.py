"""Shared by the framework adapters: what the model reads when tether says no."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

from tether.errors import TetherError
from tether.sdk.errors import ApprovalRequired, Denied


def model_message(exc: TetherError) -> str:
    """A refusal the model can act on: what happened, why, and the ids a human needs.

    Only the broker's safe fields go in (code, reasons, ids) — never tokens or secrets.
    """
    if isinstance(exc, ApprovalRequired):
        return (
            f"TETHER_APPROVAL_REQUIRED: this call needs a human's approval "
            f"(approval_id={exc.approval_id}, decision_id={exc.decision_id}). Do not retry with "
            "different arguments; tell the user an approval is pending."
        )
    if isinstance(exc, Denied):
        why = "; ".join(r.message for r in exc.reasons) or exc.code
        return (
            f"TETHER_DENIED ({exc.code}): {why} (decision_id={exc.decision_id}). "
            "This action is not allowed for the current task; do not retry it."
        )
    return f"TETHER_ERROR ({exc.code}): {exc.message}. The tool did not run."


def context_params(fn: Callable[..., Any], type_names: Iterable[str]) -> tuple[str, ...]:
    """Names of parameters that carry a framework context object (never sent to policy)."""
    names = tuple(type_names)
    out = []
    for p in inspect.signature(fn).parameters.values():
        ann = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
        text = str(ann) if ann else str(p.annotation)
        if any(n in text for n in names):
            out.append(p.name)
    return tuple(out)
