"""Drift scoring, task profiles and the baseline cache (pure parts of the drift signal)."""

from __future__ import annotations

import pytest

from tether.errors import InvalidRequest
from tether.policy.context import context_from_mapping, risk_context
from tether.policy.drift import MIN_TASKS, Baseline, BaselineCache, drift_signal, profile_of

LEARNT = Baseline(
    "spiffe://x/a",
    "support.triage",
    tasks=4,
    pairs={("read", "tickets.queue"): 4, ("read", "crm"): 1},
    peak_per_minute=10,
)


def test_cold_start_scores_zero_and_says_so() -> None:
    """With fewer than MIN_TASKS closed tasks the score is 0, nothing is new, and cold_start is set."""
    young = Baseline("a", "i", tasks=MIN_TASKS - 1, pairs={("read", "x"): 2})
    for baseline in (None, young):
        d = drift_signal(baseline, "send", "email.send", 500)
        assert d["score"] == 0 and d["new_action_for_intent"] is False and d["cold_start"] is True
    assert drift_signal(young, "send", "email.send", 0)["baseline_tasks"] == MIN_TASKS - 1


def test_new_pair_is_flagged_and_scored() -> None:
    """An (action, resource) no learnt task used is new for the intent and scores 60."""
    d = drift_signal(LEARNT, "send", "email.send", 1)
    assert d == {"score": 60, "new_action_for_intent": True, "cold_start": False, "baseline_tasks": 4}


def test_common_pair_scores_zero_and_rare_pair_less_than_new() -> None:
    """A pair every learnt task used scores 0; one used by a single task scores between 0 and 60."""
    assert drift_signal(LEARNT, "read", "tickets.queue", 5)["score"] == 0
    rare = drift_signal(LEARNT, "read", "crm", 5)
    assert 0 < rare["score"] < 60 and rare["new_action_for_intent"] is False


def test_call_rate_above_learnt_peak_raises_the_score() -> None:
    """A rate twice the learnt peak adds the full rate weight (40); at the peak it adds nothing."""
    assert drift_signal(LEARNT, "read", "tickets.queue", 10)["score"] == 0
    assert drift_signal(LEARNT, "read", "tickets.queue", 20)["score"] == 40
    assert drift_signal(LEARNT, "send", "email.send", 1000)["score"] == 100


def test_profile_learns_allowed_pairs_and_peak_rate() -> None:
    """A task's profile holds its allowed pairs only and its busiest 60 seconds."""
    decisions = [(0.0, "read", "a", "allow"), (30.0, "read", "a", "allow"), (59.0, "send", "b", "deny")]
    decisions += [(200.0, "read", "c", "allow")]
    p = profile_of(decisions)
    assert p.pairs == {("read", "a"), ("read", "c")} and p.peak_per_minute == 3


def test_cache_serves_from_memory_until_refresh_or_invalidate() -> None:
    """One load per (agent, intent) until the refresh interval passes or the agent is invalidated."""
    now = [0.0]
    loads: list[str] = []
    cache = BaselineCache(refresh_seconds=60, clock=lambda: now[0])

    def load() -> Baseline:
        loads.append("x")
        return LEARNT

    for _ in range(3):
        cache.get("a", "i", load)
    assert len(loads) == 1
    cache.invalidate("a")
    cache.get("a", "i", load)
    now[0] = 61.0
    cache.get("a", "i", load)
    assert len(loads) == 3


def test_policy_cases_may_set_drift_and_typos_are_refused() -> None:
    """`risk.drift` in a YAML case fills the record; an unknown drift field is refused."""
    ctx = context_from_mapping(
        "read",
        {"environment": "prod", "task": {"intent": "i"}, "risk": {"drift": {"new_action_for_intent": True}}},
    )
    assert ctx["risk"]["drift"]["new_action_for_intent"] is True and ctx["risk"]["drift"]["score"] == 0
    with pytest.raises(InvalidRequest) as info:
        risk_context(drift={"scroe": 5})
    assert info.value.details["field"] == "risk.drift.scroe"
