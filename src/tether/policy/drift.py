"""Drift: how far a task strays from what its (agent, intent) normally does.

A baseline is learnt from the agent's **closed** tasks of one intent: which (action,
resource) pairs they used and the highest call rate (decisions per minute) any of them
reached. Expired and revoked tasks teach nothing: a task that was stopped is not the
normal to compare against. Policy reads the result as ``context.risk.drift``::

    score                  0-100: 60 for a pair no learnt task used (less for a rare one),
                           plus up to 40 for a call rate above the highest one learnt
    new_action_for_intent  the (action, resource) pair is new for this agent and intent
    cold_start             fewer than MIN_TASKS tasks learnt: score 0, nothing is new
    baseline_tasks         how many closed tasks the baseline holds

Pure: the store reads and writes live in :mod:`tether.store.drift`. The hot path reads
a :class:`BaselineCache` (a dict lookup); a miss, a task close or the refresh interval
loads one baseline, never one query per decision.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MIN_TASKS",
    "Baseline",
    "BaselineCache",
    "TaskProfile",
    "cold_drift",
    "drift_signal",
    "profile_of",
]

#: A baseline of fewer closed tasks says nothing yet: every task would look new.
MIN_TASKS = 3
_NEW_WEIGHT = 60
_RATE_WEIGHT = 40


@dataclass(frozen=True, slots=True)
class Baseline:
    """What the closed tasks of one (agent, intent) did."""

    agent: str
    intent: str
    tasks: int = 0
    #: (action, resource) → how many learnt tasks used it.
    pairs: Mapping[tuple[str, str], int] = field(default_factory=dict)
    #: The highest number of decisions in any 60 s of a learnt task.
    peak_per_minute: int = 0

    @property
    def cold(self) -> bool:
        return self.tasks < MIN_TASKS

    def to_dict(self) -> dict[str, Any]:
        return {
            "tasks": self.tasks,
            "cold_start": self.cold,
            "min_tasks": MIN_TASKS,
            "peak_per_minute": self.peak_per_minute,
            "pairs": [{"action": a, "resource": r, "tasks": n} for (a, r), n in sorted(self.pairs.items())],
        }


@dataclass(frozen=True, slots=True)
class TaskProfile:
    """What one task did, as the baseline learns it."""

    pairs: frozenset[tuple[str, str]]
    peak_per_minute: int


def profile_of(decisions: Iterable[tuple[float, str, str, str]]) -> TaskProfile:
    """The profile of a task from its decisions ``(ts, action, resource, outcome)``.

    Only allowed pairs are learnt (a denied call is not what the intent does); every
    decision counts towards the rate, like ``context.risk.calls_last_minute``.
    """
    times: list[float] = []
    pairs: set[tuple[str, str]] = set()
    for ts, action, resource, outcome in decisions:
        times.append(ts)
        if outcome == "allow":
            pairs.add((action, resource))
    times.sort()
    peak, lo = 0, 0
    for hi, ts in enumerate(times):
        while times[lo] < ts - 60:
            lo += 1
        peak = max(peak, hi - lo + 1)
    return TaskProfile(frozenset(pairs), peak)


def cold_drift(baseline_tasks: int = 0) -> dict[str, Any]:
    """The ``DriftContext`` of no baseline: no signal, and it says so."""
    return {
        "score": 0,
        "new_action_for_intent": False,
        "cold_start": True,
        "baseline_tasks": baseline_tasks,
    }


def drift_signal(
    baseline: Baseline | None, action: str, resource: str, calls_last_minute: int
) -> dict[str, Any]:
    """``context.risk.drift`` for one action of a task against its baseline."""
    if baseline is None or baseline.cold:
        return cold_drift(baseline.tasks if baseline else 0)
    used = baseline.pairs.get((action, resource), 0)
    # New: the full weight. Seen: less the more of the learnt tasks used it.
    novelty = 1.0 if used == 0 else 0.5 * (1 - min(used, baseline.tasks) / baseline.tasks)
    peak = max(baseline.peak_per_minute, 1)
    excess = min(max((calls_last_minute - peak) / peak, 0.0), 1.0)
    score = round(_NEW_WEIGHT * novelty + _RATE_WEIGHT * excess)
    return {
        "score": max(0, min(100, score)),
        "new_action_for_intent": used == 0,
        "cold_start": False,
        "baseline_tasks": baseline.tasks,
    }


class BaselineCache:
    """Baselines by (agent, intent), held in memory, bounded, refreshed on a clock.

    ``invalidate(agent)`` drops an agent's entries after one of its tasks is learnt; the
    refresh interval bounds how stale a baseline learnt by another replica can be.
    """

    def __init__(
        self,
        *,
        max_entries: int = 4096,
        refresh_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: OrderedDict[tuple[str, str], tuple[float, Baseline]] = OrderedDict()
        self._lock = threading.Lock()
        self._max = max_entries
        self._refresh = refresh_seconds
        self._clock = clock

    def get(self, agent: str, intent: str, load: Callable[[], Baseline]) -> Baseline:
        key = (agent, intent)
        now = self._clock()
        hit = self._entries.get(key)
        if hit is not None and now - hit[0] < self._refresh:
            return hit[1]
        baseline = load()
        with self._lock:
            self._entries[key] = (now, baseline)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return baseline

    def invalidate(self, agent: str) -> None:
        with self._lock:
            for key in [k for k in self._entries if k[0] == agent]:
                del self._entries[key]
