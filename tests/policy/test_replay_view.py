"""Replay's answer cache: two recorded inputs share one Cedar answer only when no policy of
the candidate set can tell them apart (see tether.policy.replay_view)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from tether.catalog import Catalog, parse_catalog
from tether.policy import (
    PolicyEngine,
    PolicyPrincipal,
    PolicyRequest,
    action_context,
    load_bundle,
    load_schema,
)
from tether.policy.context import risk_context, task_context
from tether.policy.replay import Recorded, Replayer
from tether.policy.replay_view import View

CATALOG = {
    "intents": {"support.triage": "", "billing.refund": ""},
    "services": [
        {"id": "tickets", "sensitivity": 1, "environment": "prod", "egress": "internal"},
        {"id": "slack", "sensitivity": 0, "environment": "prod", "egress": "external"},
        {
            "id": "fs",
            "sensitivity": 1,
            "environment": "prod",
            "egress": "internal",
            "arguments": {"path": {"type": "path", "roots": ["/data"]}, "n": {"type": "integer"}},
        },
    ],
    "tools": [{"id": "tickets.comment", "service": "tickets"}, {"id": "slack.post", "service": "slack"}],
}
_A = 'action in [Tether::Action::"reads", Tether::Action::"tool:call"]'
ENFORCED = """
@id("all") permit (principal, {A}, resource);
@id("taint") forbid (principal, {A}, resource) when { context.risk.max_sensitivity_read >= 2 };
""".replace("{A}", _A)
#: Every way of reading a field the view knows, and some it keeps whole.
CANDIDATE = """
@id("triage") permit (principal, {A}, resource) when { context.task.intent == "support.triage" };
@id("old") forbid (principal, {A}, resource) when { context.task.age_seconds > 500 };
@id("burst") forbid (principal, {A}, resource)
when { context.risk.calls_last_minute >= 150 && context.task.depth != 1 };
@id("ticket") permit (principal, action == Tether::Action::"tool:call", resource)
when { context.call.hasTag("ticket_id") && context.call.getTag("ticket_id") like "T-*" };
@id("token") forbid (principal, {A}, resource)
when {
  context.call.hasTag("customer_token") &&
  ["tok-1", "tok-2"].contains(context.call.getTag("customer_token"))
};
@id("margin") forbid (principal, {A}, resource)
when { context.task.remaining_seconds - context.task.age_seconds < 100 };
@id("drift") forbid (principal, {A}, resource)
when {
  context.risk.drift == {"score": 50, "new_action_for_intent": true, "cold_start": false, "baseline_tasks": 3}
};
@id("public-only") forbid (principal, {A}, resource)
when { context.args.hasTag("path") && !(context.args.getTag("path").under.contains("/data/public")) };
@id("few") forbid (principal, {A}, resource)
when { context.args.hasTag("n") && context.args.getTag("n").max > 5 };
@id("team") permit (principal, {A}, resource)
when { principal.hasTag("team") && principal.getTag("team") == "billing" };
@id("ask") @approval("first use needs a human") forbid (principal, {A}, resource)
when { context.risk.first_use } unless { context.approval.granted };
""".replace("{A}", _A)


@pytest.fixture
def catalog() -> Catalog:
    return parse_catalog(CATALOG)


def _policies(tmp_path: Path, name: str, text: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "policies.cedar").write_text(text)
    return d


def _random_request(rng: random.Random, catalog: Catalog) -> PolicyRequest:
    action, resource = rng.choice(
        [("read", "tickets"), ("tool:call", "tickets.comment"), ("tool:call", "slack.post"), ("read", "fs")]
    )
    args: dict[str, Any] = {}
    for name, values in (
        ("ticket_id", ["T-1", "T-22", "X-9"]),
        ("customer_token", ["tok-1", "tok-2", "tok-3", "tok-4"]),
        ("note", ["a", "b", "c"]),
    ):
        if action == "tool:call" and rng.random() < 0.5:
            args[name] = rng.choice(values)
    if resource == "fs":
        args["path"] = rng.choice(["/data/public/a", "/data/public/b", "/data/private/c"])
        args["n"] = rng.choice([1, 5, 6, 40])
    agent = rng.choice(["a", "b", "c"])
    tags = rng.choice([{}, {"team": "billing"}, {"team": "support"}, {"team": "billing", "site": "x"}])
    drift = rng.choice(
        [
            {"score": 50, "new_action_for_intent": True, "cold_start": False, "baseline_tasks": 3},
            {"score": 51, "new_action_for_intent": True, "cold_start": False, "baseline_tasks": 3},
            {"score": 50, "new_action_for_intent": True, "cold_start": False, "baseline_tasks": 4},
        ]
    )
    res = catalog.get(resource)
    assert res is not None
    context = action_context(
        task=task_context(
            id=f"tsk_{rng.randrange(1000)}",
            intent=rng.choice(["support.triage", "billing.refund"]),
            depth=rng.choice([0, 1, 2]),
            age_seconds=rng.choice([0, 10, 499, 500, 501, 900]),
            remaining_seconds=rng.choice([50, 600, 3000]),
        ),
        risk=risk_context(
            calls_last_minute=rng.choice([0, 3, 149, 150, 151, 400]),
            first_use=rng.random() < 0.3,
            max_sensitivity_read=rng.choice([0, 1, 2]),
            drift=drift,
        ),
        approval={"granted": rng.random() < 0.5},
        environment="prod",
    )
    principal = PolicyPrincipal(f"spiffe://support.example/{agent}", "support.example", "jwt-svid", tags)
    return PolicyRequest(principal, action, res, context, args)


def _history(engine: PolicyEngine, catalog: Catalog, n: int) -> list[Recorded]:
    """``n`` decisions of the live engine, as they come back from the store: a quarter
    drawn at random, the rest repeating one of those in another task and with another
    value of an argument no policy names and another call rate (as real traffic repeats
    itself)."""
    rng = random.Random(18)
    drawn: list[PolicyRequest] = []
    out = []
    for i in range(n):
        if not drawn or rng.random() < 0.25:
            req = _random_request(rng, catalog)
            drawn.append(req)
        else:
            req = rng.choice(drawn)
            task = {**req.context["task"], "id": f"tsk_{i}"}
            # Another call rate: the same answer of `>= 150` or not, decided by the key.
            risk = {**req.context["risk"], "calls_last_minute": rng.choice([0, 3, 149, 150, 151, 400])}
            args = {**req.arguments, "note": str(i)} if req.action == "tool:call" else req.arguments
            req = replace(req, context={**req.context, "task": task, "risk": risk}, arguments=args)
        r = engine.decide(req)
        assert r.input is not None
        inp = orjson.loads(orjson.dumps(r.input))
        intent = inp["context"]["task"]["intent"]
        policies = tuple(x.policy_id for x in r.reasons)
        out.append(Recorded(f"d{i}", req.principal.spiffe_id, intent, r.outcome.value, policies, inp, False))
    return out


def _report(replayer: Replayer, records: list[Recorded]) -> dict[str, Any]:
    d = replayer.replay(records).to_dict()
    del d["seconds"], d["rate_per_second"], d["evaluated"]
    return d


def test_the_answer_cache_reports_exactly_what_asking_cedar_every_time_does(catalog, tmp_path):
    """A varied history, replayed with the cache keyed on what the candidate can see and
    with it keyed on the whole input: the same flips, groups and examples."""
    engine = PolicyEngine.from_paths(_policies(tmp_path, "enforced", ENFORCED), catalog)
    history = _history(engine, catalog, 800)
    schema = load_schema()
    bundle = load_bundle(_policies(tmp_path, "candidate", CANDIDATE), schema)
    cached = Replayer(bundle, catalog, schema)
    whole = Replayer(bundle, catalog, schema, view=View.whole())
    report = _report(cached, history)
    assert report == _report(whole, history)
    assert report["replayed"] == 800 and report["flips"] > 100
    assert {g["policy"] for g in report["by_policy"]} >= {"old", "burst", "token", "margin", "drift", "ask"}
    assert len(report["by_kind"]) >= 3
    # The cache was used, or this test proves nothing.
    assert cached.evaluated * 2 < whole.evaluated


def test_batches_do_not_change_the_report(catalog, tmp_path, monkeypatch):
    """Answers carried from one batch to the next (and within one) are the same answers."""
    engine = PolicyEngine.from_paths(_policies(tmp_path, "enforced", ENFORCED), catalog)
    history = _history(engine, catalog, 300)
    schema = load_schema()
    bundle = load_bundle(_policies(tmp_path, "candidate", CANDIDATE), schema)
    expected = _report(Replayer(bundle, catalog, schema), history)
    monkeypatch.setattr("tether.policy.replay.BATCH", 7)
    assert _report(Replayer(bundle, catalog, schema), history) == expected


# -- the key itself -----------------------------------------------------------------------

BASE: dict[str, Any] = {
    "action": "read",
    "resource": {"type": "Tether::Service", "id": "tickets"},
    "principal": {
        "id": "spiffe://d/a",
        "trust_domain": "d",
        "attestation": "jwt-svid",
        "tags": {"team": "x"},
    },
    "call": {"note": "hello"},
    "args": {},
    "catalog": "sha256:0",
    "context": {
        "task": {"id": "tsk_1", "intent": "support.triage", "age_seconds": 10, "remaining_seconds": 600},
        "risk": {"calls_last_minute": 3, "first_use": False},
        "approval": {"granted": False},
        "environment": "prod",
    },
}


def _with(path: str, value: Any) -> dict[str, Any]:
    inp = orjson.loads(orjson.dumps(BASE))
    *parents, last = path.split(".")
    node = inp
    for p in parents:
        node = node[p]
    node[last] = value
    return inp


def _same(policy: str) -> Callable[[str, Any, Any], bool]:
    view = View.of([policy])
    return lambda path, a, b: view.key(_with(path, a)) == view.key(_with(path, b))


def test_a_field_no_policy_names_is_left_out_of_the_key():
    same = _same('permit (principal, action, resource) when { context.task.intent == "support.triage" };')
    assert same("context.task.age_seconds", 10, 9000)
    assert same("context.task.id", "tsk_1", "tsk_2")
    assert same("call.note", "hello", "bye")  # a tag no policy names
    assert same("principal.tags", {"team": "x"}, {})
    assert not same("context.task.intent", "support.triage", "billing.refund")


def test_a_field_a_policy_reads_is_never_merged():
    """The field left out above, now read by the candidate: its values stay apart where
    the comparison tells them apart, and only there."""
    same = _same("forbid (principal, action, resource) when { context.task.age_seconds > 500 };")
    assert not same("context.task.age_seconds", 10, 9000)
    assert not same("context.task.age_seconds", 500, 501)
    assert same("context.task.age_seconds", 10, 499)
    assert same("context.task.age_seconds", 501, 9000)
    same = _same('forbid (principal, action, resource) when { context.call.getTag("note") == "bye" };')
    assert not same("call.note", "hello", "bye")
    assert same("call.note", "hello", "hi")


def test_equality_is_typed_as_in_cedar():
    """Python's 1 == True is not Cedar's: a Long and a Bool never share an answer."""
    same = _same("forbid (principal, action, resource) when { context.risk.first_use == true };")
    assert not same("context.risk.first_use", True, 1)
    assert not same("context.risk.first_use", True, False)


def test_like_and_literal_sets_key_on_their_answers():
    same = _same('forbid (principal, action, resource) when { context.task.id like "tsk_9*" };')
    assert same("context.task.id", "tsk_1", "tsk_2")
    assert not same("context.task.id", "tsk_1", "tsk_91")
    same = _same('forbid (principal, action, resource) when { ["a", "b"].contains(context.environment) };')
    assert same("context.environment", "prod", "staging")
    assert not same("context.environment", "a", "b")


@pytest.mark.parametrize(
    "policy",
    [
        # Arithmetic: 10 and 11 may answer differently.
        "forbid (principal, action, resource) when { context.task.age_seconds + 490 > 500 };",
        # A comparison between two fields.
        "forbid (principal, action, resource)"
        " when { context.task.age_seconds < context.risk.calls_last_minute };",
        # Record equality reads every field of the record.
        'forbid (principal, action, resource) when { context.task == {"id": "tsk_1", "intent": "x", '
        '"age_seconds": 11, "remaining_seconds": 600} };',
        # The bare context.
        'forbid (principal, action, resource) when { context == {"x": 1} };',
    ],
)
def test_a_field_read_otherwise_than_against_literals_keeps_its_value(policy):
    assert not _same(policy)("context.task.age_seconds", 10, 11)


def test_a_record_literal_key_named_like_a_syntax_word_is_still_read():
    """`{attr: …}`: the record's field names are not the JSON form's own keys."""
    policy = "forbid (principal, action, resource) when { {attr: context.task.age_seconds} == {attr: 11} };"
    assert not _same(policy)("context.task.age_seconds", 10, 11)


def test_a_computed_tag_key_keeps_every_tag():
    same = _same("forbid (principal, action, resource) when { context.call.hasTag(context.task.id) };")
    assert not same("call.note", "hello", "bye")
    assert not same("context.task.id", "tsk_1", "tsk_2")


def test_a_tag_named_only_by_has_tag_keeps_its_presence():
    same = _same('forbid (principal, action, resource) when { context.call.hasTag("ticket") };')
    assert same("call.note", "hello", "bye")
    assert not same("call", {"note": "x"}, {"note": "x", "ticket": "T-1"})


def test_the_type_of_a_left_out_field_stays_in_the_key():
    """Schema validation of the request reads types: a String age fails where a Long passes."""
    same = _same("permit (principal, action, resource);")
    assert not same("context.task.age_seconds", 10, "10")
    assert not same("context.risk", {"calls_last_minute": 3}, {"calls_last_minute": 3, "extra": 1})


def test_a_masked_value_keys_on_its_digest():
    """Resolved only when Cedar is asked: two digests are two values."""
    same = _same("permit (principal, action, resource);")
    a = {"$masked": "String", "digest": "hmac-sha256:aa"}
    b = {"$masked": "String", "digest": "hmac-sha256:bb"}
    assert not same("context.task.id", a, b)
    assert same("context.task.id", a, dict(a))


@pytest.mark.parametrize(
    "sources",
    [
        ["permit (principal == ?principal, action, resource);"],  # a template
        ["this is not cedar"],
        [],
    ],
)
def test_a_set_the_view_cannot_read_keeps_the_whole_input(sources):
    view = View.of(sources)
    assert view.keeps_all
    assert view.key(_with("context.task.id", "tsk_1")) != view.key(_with("context.task.id", "tsk_2"))
