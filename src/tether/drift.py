"""The drift risk signal at run time: learn closed tasks, score each action cheaply.

``Drift.signal`` is on the authorize hot path: it reads the in-memory
:class:`~tether.policy.drift.BaselineCache` and loads a baseline (two indexed reads on
the decision's own connection) only on a miss or once a refresh interval has passed.
Learning happens after a ``task.closed`` event has committed — never inside the
transaction that ends the task, and after the credentials' listener has queued the cut
(it is added ahead of the others), so revocation is not slowed by it — and drops
the agent's cached baselines so the next decision sees what was learnt.
A failure to learn is logged and costs one task of baseline, never the close.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection

from tether.audit import event as ev
from tether.audit.chain import AuditChain
from tether.audit.event import Event
from tether.model import Task, TaskState
from tether.policy.drift import Baseline, BaselineCache, drift_signal, profile_of
from tether.seams import Store
from tether.store import drift as store
from tether.store import repo

__all__ = ["Drift", "task_drift"]

log = logging.getLogger(__name__)


class Drift:
    def __init__(
        self, db: Store, audit: AuditChain, clock: Callable[[], float], *, refresh_seconds: float = 60.0
    ) -> None:
        self._db = db
        self._clock = clock
        self.cache = BaselineCache(refresh_seconds=refresh_seconds)
        audit.add_listener(self._on_event)

    def baseline(self, conn: Connection, agent: str, intent: str) -> Baseline:
        return self.cache.get(agent, intent, lambda: _load(conn, agent, intent))

    def signal(
        self, conn: Connection, task: Task, action: str, resource: str, calls_last_minute: int
    ) -> dict[str, Any]:
        """``context.risk.drift`` for this action of ``task``."""
        return drift_signal(self.baseline(conn, task.agent, task.intent), action, resource, calls_last_minute)

    def _on_event(self, event: Event) -> None:
        # Called after every committed event (decisions too): return at once unless a close.
        if event.type != ev.TASK_CLOSED or event.task_id is None:
            return
        try:
            self.learn(event.task_id)
        except Exception:
            log.exception("drift: could not learn closed task %s", event.task_id)

    def learn(self, task_id: str) -> bool:
        """Add a closed task to its (agent, intent) baseline; False if it is not closed."""
        with self._db.begin() as conn:
            task = repo.get_task(conn, task_id)
            if task is None or task.state is not TaskState.CLOSED:
                return False
            profile = profile_of(
                (ts, str(p.get("action", "")), str(p.get("resource", "")), str(p.get("outcome", "")))
                for ts, p in store.task_decisions(conn, task_id)
            )
            store.learn_task(
                conn, task.agent, task.intent, profile.pairs, profile.peak_per_minute, self._clock()
            )
        self.cache.invalidate(task.agent)
        return True


def _load(conn: Connection, agent: str, intent: str) -> Baseline:
    tasks, peak, pairs = store.load_baseline(conn, agent, intent)
    return Baseline(agent, intent, tasks, pairs, peak)


def task_drift(conn: Connection, task: Task) -> dict[str, Any]:
    """For `tether task show`: the baseline and how far this task strayed from it.

    Reads the drift each decision of the task recorded (``payload.risk.drift``), so
    it shows what policy saw at the time, not a score recomputed today.
    """
    baseline = _load(conn, task.agent, task.intent)
    peak, scored = 0, 0
    new_pairs: set[tuple[str, str]] = set()
    for _, body in store.task_decisions(conn, task.id):
        drift = (body.get("risk") or {}).get("drift")
        if not isinstance(drift, dict):
            continue
        scored += 1
        peak = max(peak, int(drift.get("score", 0)))
        if drift.get("new_action_for_intent"):
            new_pairs.add((str(body.get("action", "")), str(body.get("resource", ""))))
    return {
        "baseline": baseline.to_dict(),
        "max_score": peak,
        "scored_decisions": scored,
        "new_actions": [{"action": a, "resource": r} for a, r in sorted(new_pairs)],
    }
