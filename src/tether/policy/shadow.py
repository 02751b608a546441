"""Shadow mode: a candidate policy set answers beside the enforced one and never acts.

The engine evaluates the shadow set on the very request (and entities handle) it built
for the enforced set, so shadow costs one more Cedar evaluation (two when the candidate
asks for an approval, to check that a human's yes would allow). This module turns the two
answers into what operators see: a ``policy.shadow_diverged`` audit event when the
outcomes differ, a ``policy.shadow_error`` event when the shadow evaluation failed, and
counters (:class:`ShadowCounters`) that ``tether policy shadow`` shows. The enforced
decision is built before any of this runs and nothing here can change it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from tether.audit import event as ev
from tether.model import Outcome

__all__ = ["ShadowCounters", "flip_kind", "record"]

Emit = Callable[..., Any]


def flip_kind(before: Outcome | str, after: Outcome | str) -> str:
    """``allow→deny``-style name of a change of outcome (the replay report uses it too)."""
    b = before.value if isinstance(before, Outcome) else before
    a = after.value if isinstance(after, Outcome) else after
    return f"{b}→{a}"


class ShadowCounters:
    """Decisions the shadow set saw, how many diverged (by kind) and how many errored."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.evaluated = 0
        self.errors = 0
        self.diverged: dict[str, int] = {}

    def note(self, kind: str | None, *, error: bool = False) -> None:
        with self._lock:
            self.evaluated += 1
            if error:
                self.errors += 1
            elif kind is not None:
                self.diverged[kind] = self.diverged.get(kind, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "evaluated": self.evaluated,
                "diverged": sum(self.diverged.values()),
                "by_kind": dict(sorted(self.diverged.items())),
                "errors": self.errors,
            }


def _side(outcome: Any, reasons: Any, version: str, code: str | None) -> dict[str, Any]:
    return {
        "outcome": outcome.value if isinstance(outcome, Outcome) else outcome,
        "policies": [r.policy_id for r in reasons],
        "policy_version": version,
        **({"code": code} if code else {}),
    }


def record(
    emit: Emit,
    counters: ShadowCounters,
    enforced: Any,
    decision_id: str,
    trace_id: str | None,
    fields: Mapping[str, Any],
) -> None:
    """Audit and count the shadow answer carried by ``enforced`` (a ``PolicyResult``)."""
    shadow = enforced.shadow
    if shadow is None:
        return
    where = {}
    if enforced.input is not None:
        where = {"action": enforced.input["action"], "resource": enforced.input["resource"]["id"]}
    if shadow.error is not None:
        counters.note(None, error=True)
        emit(
            ev.POLICY_SHADOW_ERROR,
            {
                **where,
                "error": shadow.error[:1000],
                "shadow_version": shadow.policy_version,
                "enforced": _side(enforced.outcome, enforced.reasons, enforced.policy_version, enforced.code),
            },
            decision_id=decision_id,
            trace_id=trace_id,
            **fields,
        )
        return
    if shadow.outcome is enforced.outcome:
        counters.note(None)
        return
    kind = flip_kind(enforced.outcome, shadow.outcome)
    counters.note(kind)
    emit(
        ev.POLICY_SHADOW_DIVERGED,
        {
            **where,
            "kind": kind,
            "enforced": _side(enforced.outcome, enforced.reasons, enforced.policy_version, enforced.code),
            "shadow": _side(shadow.outcome, shadow.reasons, shadow.policy_version, shadow.code),
        },
        decision_id=decision_id,
        trace_id=trace_id,
        **fields,
    )
