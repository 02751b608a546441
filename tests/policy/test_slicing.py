"""Policy slicing answers exactly as the whole set: decision, determining policies, errors."""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import cedarpy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether import actions
from tether.catalog import Catalog, Resource, load_catalog
from tether.model import Outcome
from tether.policy import PolicyEngine, PolicyPrincipal, PolicyRequest, PolicyResult
from tether.policy import slicing as slicing_module
from tether.policy.context import (
    LIFECYCLE_ACTIONS,
    action_context,
    approval_context,
    grant_context,
    lifecycle_context,
    request_context,
    risk_context,
    task_context,
)
from tether.policy.loader import load_schema

from .conftest import EXAMPLES, PRINCIPAL, make_request

AGENTS = ["spiffe://support.example/a0", "spiffe://support.example/a1", PRINCIPAL.spiffe_id]
INTENTS = ["support.triage", "billing.refund", "reporting.weekly", "gen.i0", "gen.i1", "gen.i2"]
SERVICES = ["tickets", "crm", "billing", "slack-external", "email", "tickets-staging"]
TOOLS = ["tickets.comment", "crm.lookup", "billing.refund", "email.send", "tickets.queue"]
ACTION_SCOPES = [
    "action",
    *(f'action == Tether::Action::"{a}"' for a in sorted(actions.ALL)),
    'action in Tether::Action::"reads"',
    'action in Tether::Action::"writes"',
    'action in [Tether::Action::"sends", Tether::Action::"tool:call"]',
    'action in [Tether::Action::"read", Tether::Action::"task:open"]',
]
PRINCIPAL_SCOPES = [
    "principal",
    "principal is Tether::Agent",
    *(f'principal == Tether::Agent::"{a}"' for a in AGENTS),
    f'principal in Tether::Agent::"{AGENTS[0]}"',  # not indexed: kept in every slice
]
RESOURCE_SCOPES = [
    "resource",
    *(f'resource == Tether::Service::"{s}"' for s in SERVICES),
    *(f'resource == Tether::Tool::"{t}"' for t in TOOLS),
    *(f'resource in Tether::Service::"{s}"' for s in SERVICES),
    "resource is Tether::Tool",
    "resource is Tether::Dataset",
    'resource is Tether::Tool in Tether::Service::"tickets"',
    'resource is Tether::Dataset in Tether::Service::"crm"',
]
# `{i}`: an intent. Overflow is the error Cedar's validator lets through: the product
# errors once `calls_last_minute` ≥ 2, before or after the guard.
OVERFLOW = "context.risk.calls_last_minute * 9223372036854775807 > 1"
CONDITIONS = [
    "",
    'when {{ context.task.intent == "{i}" }}',
    'when {{ "{i}" == context.task.intent && resource.sensitivity <= 1 }}',
    'when {{ ["{i}", "gen.i2"].contains(context.task.intent) }}',
    'when {{ context.environment == "staging" }}',
    'when {{ context.task.intent == "{i}" && ' + OVERFLOW + " }}",  # errors past the guard
    "when {{ " + OVERFLOW + ' && context.task.intent == "{i}" }}',  # errors before the guard
    "when {{ " + OVERFLOW + " }}",
    'unless {{ context.task.intent == "{i}" }}',  # an unless is no guard
    "when {{ context.risk.calls_last_minute > 3 }}",
    'when {{ context.call.hasTag("ticket") }} when {{ context.task.intent == "{i}" }}',
    'when {{ context.task.intent == "{i}" }} when {{ ' + OVERFLOW + " }}",
]


def _generated(seed: int, n: int, schema: cedarpy.Schema) -> str:
    """``n`` random policies that each validate against the schema (scope forms × guards ×
    conditions that error, with @approval forbids among them)."""
    rnd = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        effect = rnd.choice(["permit", "permit", "forbid"])
        cond = rnd.choice(CONDITIONS).format(i=rnd.choice(INTENTS))
        notes = f'@id("gen-{seed}-{len(out)}")\n'
        if effect == "forbid" and rnd.random() < 0.3:
            notes += '@approval("a human decides")\n'
            cond = (cond + " " if cond else "") + "unless { context.approval.granted }"
        text = (
            f"{notes}{effect} ({rnd.choice(PRINCIPAL_SCOPES)}, {rnd.choice(ACTION_SCOPES)}, "
            f"{rnd.choice(RESOURCE_SCOPES)}) {cond};\n"
        )
        if cedarpy.validate_policies(text, schema).validation_passed:
            out.append(text)
    return "\n".join(out)


def _policy_dir(tmp: Path, seed: int, n: int) -> Path:
    directory = tmp / f"policies-{seed}"
    shutil.copytree(EXAMPLES / "policies", directory)
    (directory / "90-generated.cedar").write_text(_generated(seed, n, load_schema()))
    return directory


def _answer(result: PolicyResult) -> tuple[Any, ...]:
    return (
        result.outcome,
        tuple((r.policy_id, r.message) for r in result.reasons),
        result.code,
        result.approval_reason,
        result.errors,
    )


@pytest.fixture(scope="module")
def engines(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Catalog, list[tuple[PolicyEngine, PolicyEngine]]]:
    catalog = load_catalog(EXAMPLES / "catalog.yaml")
    tmp = tmp_path_factory.mktemp("slicing")
    pairs = []
    for seed, n in ((1, 150), (2, 400)):
        directory = _policy_dir(tmp, seed, n)
        sliced = PolicyEngine(slicing=True)
        whole = PolicyEngine(slicing=False)
        for engine in (sliced, whole):
            engine.set_catalog(catalog)
            engine.reload(directory)
        assert sliced._state.slicer is not None and whole._state.slicer is None
        pairs.append((sliced, whole))
    return catalog, pairs


@st.composite
def requests(draw: st.DrawFn, catalog: Catalog) -> PolicyRequest:
    agent = draw(st.sampled_from(AGENTS))
    principal = PolicyPrincipal(agent, "support.example", "jwt-svid", {"team": "support"})
    action = draw(st.sampled_from(sorted(actions.ALL)))
    ids = sorted(catalog.resources)
    resource = catalog.resources[draw(st.sampled_from(ids))]
    if draw(st.integers(0, 9)) == 0:
        # Not the catalog's entry: a tool sent along with the request, under some service.
        resource = Resource("ghost.tool", "tool", draw(st.sampled_from(SERVICES)), 1, "prod", "internal", "x")
    task = task_context(id="t-1", intent=draw(st.sampled_from([*INTENTS, "unheard.of"])))
    environment = draw(st.sampled_from(["prod", "staging"]))
    approval = approval_context(granted=draw(st.booleans()))
    if action in LIFECYCLE_ACTIONS:
        grant = grant_context(action="read", child_agent=AGENTS[1])
        context = lifecycle_context(task=task, grant=grant, environment=environment, approval=approval)
    else:
        risk = risk_context(
            calls_last_minute=draw(st.integers(0, 5)), max_sensitivity_read=draw(st.integers(0, 3))
        )
        request = request_context(method="get", path="/x")
        context = action_context(
            task=task, risk=risk, request=request, approval=approval, environment=environment
        )
    arguments = draw(st.sampled_from([{}, {"ticket": "T-1"}, {"ticket_id": "T-9"}, {"missing": "x"}]))
    return PolicyRequest(principal, action, resource, context, arguments)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_sliced_and_whole_set_answer_the_same(
    engines: tuple[Catalog, list[tuple[PolicyEngine, PolicyEngine]]], data: st.DataObject
) -> None:
    """For random requests over the examples plus generated policies, the slice's decision,
    determining policies and errors are the whole set's."""
    catalog, pairs = engines
    request = data.draw(requests(catalog))
    for sliced, whole in pairs:
        assert _answer(sliced.decide(request)) == _answer(whole.decide(request))


def test_the_random_requests_exercise_every_outcome_and_real_slices(
    engines: tuple[Catalog, list[tuple[PolicyEngine, PolicyEngine]]],
) -> None:
    """The property above is not vacuous: allows, denies, approvals and errors all occur,
    and slices are much smaller than their set."""
    catalog, pairs = engines
    sliced, whole = pairs[1]
    rnd = random.Random(5)
    seen: dict[str | None, int] = {}
    for _ in range(300):
        request = _random_request(rnd, catalog)
        answer = sliced.decide(request)
        assert _answer(answer) == _answer(whole.decide(request))
        seen[answer.code] = seen.get(answer.code, 0) + 1
    assert {None, "no_permit", "policy_forbid", "approval_required", "policy_error"} <= set(seen)
    slicer = sliced._state.slicer
    assert slicer is not None
    sizes = [s.size for s in slicer._keys.items.values()]
    assert max(sizes) < slicer.size / 2


def _random_request(rnd: random.Random, catalog: Catalog) -> PolicyRequest:
    agent = rnd.choice(AGENTS)
    principal = PolicyPrincipal(agent, "support.example", "jwt-svid", {})
    action = rnd.choice(sorted(actions.ALL - LIFECYCLE_ACTIONS))
    resource = catalog.resources[rnd.choice(sorted(catalog.resources))]
    context = action_context(
        task=task_context(id="t", intent=rnd.choice(INTENTS)),
        risk=risk_context(calls_last_minute=rnd.randrange(6)),
        approval=approval_context(granted=rnd.random() < 0.3),
        environment=rnd.choice(["prod", "staging"]),
    )
    return PolicyRequest(principal, action, resource, context, rnd.choice([{}, {"ticket": "T-1"}]))


PERMIT_ALL = '@id("allow-all")\npermit (principal, action, resource);\n'


@pytest.mark.parametrize(
    "forbid",
    [
        # keyed on the resource's service, the request is on a dataset of it
        'forbid (principal, action, resource in Tether::Service::"tickets");',
        'forbid (principal, action, resource is Tether::Dataset in Tether::Service::"tickets");',
        # keyed on an action group, the request names one of its actions
        'forbid (principal, action in Tether::Action::"reads", resource);',
        'forbid (principal, action in [Tether::Action::"writes", Tether::Action::"reads"], resource);',
        # keyed on the agent, and on a guard the task's intent satisfies
        f'forbid (principal == Tether::Agent::"{PRINCIPAL.spiffe_id}", action, resource);',
        "forbid (principal, action, resource) "
        'when { ["x", "support.triage"].contains(context.task.intent) };',
        # read through an entity: no guard is taken from it
        'forbid (principal, action, resource) when { context.call.hasTag("ticket") };',
        # not indexed at all: in every slice
        f'forbid (principal in Tether::Agent::"{PRINCIPAL.spiffe_id}", action, resource);',
    ],
)
def test_a_forbid_hidden_in_another_slice_still_denies(
    forbid: str, write_policies: Callable[..., Path], example_catalog: Catalog
) -> None:
    """A forbid indexed under a group, an ancestor, an agent or a guard still reaches the
    request it matches, and denies with its id."""
    directory = write_policies({"a.cedar": PERMIT_ALL, "b.cedar": f'@id("hidden")\n{forbid}\n'})
    engine = PolicyEngine.from_paths(directory, example_catalog)
    assert engine._state.slicer is not None
    request = make_request(example_catalog, "read", "tickets.queue", arguments={"ticket": "T-1"})
    result = engine.decide(request)
    assert (result.outcome, result.code) == (Outcome.DENY, "policy_forbid")
    assert [r.policy_id for r in result.reasons] == ["hidden"]


def test_a_forbid_on_the_service_of_a_resource_sent_along_still_denies(
    write_policies: Callable[..., Path], example_catalog: Catalog
) -> None:
    """A resource the catalog does not hold gets its ancestors from the entity sent with it."""
    directory = write_policies(
        {
            "a.cedar": PERMIT_ALL
            + '@id("hidden")\nforbid (principal, action, resource in Tether::Service::"crm");\n'
        }
    )
    engine = PolicyEngine.from_paths(directory, example_catalog)
    base = make_request(example_catalog, "read", "tickets")
    ghost = Resource("ghost.tool", "tool", "crm", 0, "prod", "internal", "x")
    result = engine.decide(PolicyRequest(base.principal, "read", ghost, base.context))
    assert (result.code, [r.policy_id for r in result.reasons]) == ("policy_forbid", ["hidden"])


def test_an_index_that_cannot_be_built_evaluates_the_whole_set(
    monkeypatch: pytest.MonkeyPatch, write_policies: Callable[..., Path], example_catalog: Catalog
) -> None:
    """A slicer failure costs speed, never an answer: the whole set decides."""

    def broken(*_: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(slicing_module.PolicySlicer, "__init__", broken)
    directory = write_policies(
        {
            "a.cedar": PERMIT_ALL
            + '@id("no-read")\nforbid (principal, action == Tether::Action::"read", resource);\n'
        }
    )
    engine = PolicyEngine.from_paths(directory, example_catalog)
    assert engine._state.slicer is None
    result = engine.decide(make_request(example_catalog, "read", "tickets"))
    assert [r.policy_id for r in result.reasons] == ["no-read"]


def test_requests_that_differ_only_in_what_no_policy_reads_share_one_slice(
    write_policies: Callable[..., Path], example_catalog: Catalog
) -> None:
    """An unnamed agent or intent does not make a slice of its own, so the maps stay small."""
    engine = PolicyEngine.from_paths(EXAMPLES / "policies", example_catalog)
    base = make_request(example_catalog, "read", "tickets.queue")
    for i in range(20):
        principal = PolicyPrincipal(f"spiffe://support.example/agent-{i}", "support.example", "jwt-svid", {})
        context = dict(base.context)
        context["task"] = task_context(id="t", intent=f"unheard.of.{i}")
        engine.decide(PolicyRequest(principal, "read", base.resource, context))
    slicer = engine._state.slicer
    assert slicer is not None
    assert len(slicer._keys.items) == 1 and len(slicer._sets.items) == 1


def test_the_slice_maps_are_bounded(monkeypatch: pytest.MonkeyPatch, example_catalog: Catalog) -> None:
    """However many distinct requests arrive, the slicer keeps a bounded number of handles."""
    monkeypatch.setattr(slicing_module, "_KEYS_MAX", 3)
    monkeypatch.setattr(slicing_module, "_SETS_MAX", 2)
    engine = PolicyEngine.from_paths(EXAMPLES / "policies", example_catalog)
    for resource in sorted(example_catalog.resources):
        for action in ("read", "write", "send"):
            engine.decide(make_request(example_catalog, action, resource))
    slicer = engine._state.slicer
    assert slicer is not None
    assert len(slicer._keys.items) <= 3 and len(slicer._sets.items) <= 2


@pytest.mark.parametrize(
    "context",
    [
        {"task": {"__entity": {"type": "Tether::Task", "id": "t"}, "intent": "x"}},
        {"task": {"__extn": {"fn": "ip", "arg": "10.0.0.1"}, "intent": "x"}},
        {"task": {"type": "Tether::Task", "id": "x"}},  # an entity reference without `__entity`
        {"task": {"intent": 3}},
        {"task": {}},
        {},
    ],
)
def test_no_guard_is_read_through_an_entity_an_extension_or_a_missing_value(context: dict[str, Any]) -> None:
    """Where Cedar's attribute access could error, or the value is not a plain string, the
    guard reads as unknown and its policies stay in the slice."""
    assert slicing_module._context_value(context, ("task", "intent")) is None
    assert slicing_module._context_value(context, ("task", "id")) is None
    assert slicing_module._context_value({"task": {"intent": "x"}}, ("task", "intent")) == "x"


def test_a_bundle_built_from_a_handle_is_evaluated_whole(
    example_catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    """A set derived from a handle (no policy files to index) decides as the whole set, quietly."""
    loaded = PolicyEngine.from_paths(EXAMPLES / "policies", example_catalog).bundle
    derived = PolicyEngine()
    derived.set_catalog(example_catalog)
    derived.set_bundle(replace(loaded, sources={}))
    assert derived._state.slicer is None and not caplog.records
    request = make_request(example_catalog, "read", "tickets.queue")
    assert derived.decide(request).outcome is Outcome.ALLOW
