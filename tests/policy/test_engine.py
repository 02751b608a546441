"""The policy engine: outcomes, codes, fail-closed behaviour, reloads, Call tags."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable
from pathlib import Path

import cedarpy
import pytest

from tether.catalog import Catalog
from tether.errors import InvalidRequest, PolicyError
from tether.model import Outcome, Workload
from tether.policy import PolicyEngine, PolicyPrincipal, PolicyRequest
from tether.policy import engine as engine_module
from tether.policy.context import risk_context, task_context

from .conftest import PRINCIPAL, make_request

Make = Callable[[dict[str, str]], PolicyEngine]
Write = Callable[[dict[str, str]], Path]

PERMIT_ALL = '@id("all")\n@reason("open bar")\npermit (principal, action, resource);\n'
APPROVAL = (
    '@id("ask")\n@approval("a human looks first")\nforbid (principal, action, resource)\n'
    "unless { context.approval.granted };\n"
)
HARD_FORBID = (
    '@id("never")\n@reason("not this one")\nforbid (principal, action, resource)\n'
    'when { resource == Tether::Tool::"tickets.comment" };\n'
)


def test_allow_reports_policy_ids_and_version(engine_for: Make, catalog: Catalog) -> None:
    """An allow carries the @id and @reason of the determining permit and the version."""
    engine = engine_for({"p.cedar": PERMIT_ALL})
    result = engine.decide(make_request(catalog))
    assert result.outcome is Outcome.ALLOW and result.code is None
    assert [(r.policy_id, r.message) for r in result.reasons] == [("all", "open bar")]
    assert result.policy_version == engine.bundle.version


def test_policy_without_id_is_named_file_and_line(engine_for: Make, catalog: Catalog) -> None:
    """Without @id, a reason names the policy as file:line."""
    engine = engine_for({"p.cedar": "\n\npermit (principal, action, resource);\n"})
    assert [r.policy_id for r in engine.decide(make_request(catalog)).reasons] == ["p.cedar:3"]


def test_fresh_engine_denies_everything(catalog: Catalog) -> None:
    """With no policy loaded, every request is denied with code no_policy."""
    result = PolicyEngine().decide(make_request(catalog))
    assert (result.outcome, result.code) == (Outcome.DENY, "no_policy")


def test_empty_policy_directory_denies_everything(engine_for: Make, catalog: Catalog) -> None:
    """Loading an empty directory puts a deny-all set in force (code no_policy)."""
    result = engine_for({}).decide(make_request(catalog))
    assert (result.outcome, result.code) == (Outcome.DENY, "no_policy")


def test_no_matching_permit_denies(engine_for: Make, catalog: Catalog) -> None:
    """A deny with no determining policy is code no_permit and has no reasons."""
    engine = engine_for({"p.cedar": 'permit (principal, action == Tether::Action::"write", resource);'})
    result = engine.decide(make_request(catalog, "read"))
    assert (result.outcome, result.code, result.reasons) == (Outcome.DENY, "no_permit", ())


def test_forbid_denies_with_reasons(engine_for: Make, catalog: Catalog) -> None:
    """A matching forbid without @approval denies with code policy_forbid and its id."""
    engine = engine_for({"p.cedar": PERMIT_ALL + HARD_FORBID})
    result = engine.decide(make_request(catalog, "tool:call", "tickets.comment"))
    assert (result.outcome, result.code) == (Outcome.DENY, "policy_forbid")
    assert [r.policy_id for r in result.reasons] == ["never"]


def test_approval_forbid_alone_requires_approval(engine_for: Make, catalog: Catalog) -> None:
    """A deny whose determining forbids all carry @approval is approval_required."""
    engine = engine_for({"p.cedar": PERMIT_ALL + APPROVAL})
    result = engine.decide(make_request(catalog))
    assert (result.outcome, result.code) == (Outcome.APPROVAL_REQUIRED, "approval_required")
    assert result.approval_reason == "a human looks first"
    assert [r.policy_id for r in result.reasons] == ["ask"]
    granted = engine.decide(make_request(catalog, granted=True))
    assert granted.outcome is Outcome.ALLOW


def test_approval_plus_hard_forbid_denies(engine_for: Make, catalog: Catalog) -> None:
    """If any determining forbid lacks @approval, the outcome is a plain deny."""
    engine = engine_for({"p.cedar": PERMIT_ALL + APPROVAL + HARD_FORBID})
    result = engine.decide(make_request(catalog, "tool:call", "tickets.comment"))
    assert (result.outcome, result.code) == (Outcome.DENY, "policy_forbid")
    assert {r.policy_id for r in result.reasons} == {"ask", "never"}
    assert result.approval_reason is None


def test_no_approval_offered_without_a_permit(engine_for: Make, catalog: Catalog) -> None:
    """A human is not asked about a request that would be denied even if they said yes."""
    engine = engine_for({"p.cedar": APPROVAL})
    result = engine.decide(make_request(catalog))
    assert (result.outcome, result.code) == (Outcome.DENY, "no_permit")


def test_arguments_reach_policy_as_call_tags(engine_for: Make, catalog: Catalog) -> None:
    """Arguments become Call tags: strings as-is, other values as compact sorted JSON."""
    engine = engine_for(
        {
            "p.cedar": """
        permit (principal, action, resource) when {
          context.call.hasTag("ticket") && context.call.getTag("ticket") == "T-1" &&
          context.call.hasTag("n") && context.call.getTag("n") == "42" &&
          context.call.hasTag("opts") && context.call.getTag("opts") == "{\\"a\\":true,\\"b\\":null}"
        };"""
        }
    )
    args: dict[str, object] = {"ticket": "T-1", "n": 42, "opts": {"b": None, "a": True}}
    assert engine.decide(make_request(catalog, arguments=args)).outcome is Outcome.ALLOW
    other = dict(args, ticket="T-2")
    assert engine.decide(make_request(catalog, arguments=other)).code == "no_permit"


def test_caller_cannot_supply_its_own_call(engine_for: Make, catalog: Catalog) -> None:
    """context.call always names the engine's Call entity, whatever the caller passes."""
    engine = engine_for(
        {"p.cedar": 'permit (principal, action, resource) when { context.call.hasTag("x") };'}
    )
    request = make_request(catalog, arguments={"x": "1"})
    spoofed = dataclasses.replace(
        request,
        arguments={},
        context=dict(request.context, call={"__entity": {"type": "Tether::Call", "id": "x"}}),
    )
    assert engine.decide(request).outcome is Outcome.ALLOW
    assert engine.decide(spoofed).code == "no_permit"


@pytest.mark.parametrize(
    "arguments",
    [
        {"bad key": "1"},
        {"": "1"},
        {"x": {1, 2}},
        {"x": float("nan")},
        {f"k{i}": "v" for i in range(65)},
        {"x": "a" * (64 * 1024 + 1)},
    ],
)
def test_unrepresentable_arguments_deny(
    engine_for: Make, catalog: Catalog, arguments: dict[str, object]
) -> None:
    """Odd argument names, non-JSON values and oversize payloads deny (arguments_invalid)."""
    engine = engine_for({"p.cedar": PERMIT_ALL})
    result = engine.decide(make_request(catalog, arguments=arguments))
    assert (result.outcome, result.code) == (Outcome.DENY, "arguments_invalid")


def test_principal_tags_reach_policy(engine_for: Make, catalog: Catalog) -> None:
    """Registration attributes of the agent are readable as principal tags."""
    engine = engine_for(
        {
            "p.cedar": "permit (principal, action, resource)\n"
            'when { principal.hasTag("team") && principal.getTag("team") == "support" };'
        }
    )
    assert engine.decide(make_request(catalog)).outcome is Outcome.ALLOW
    outsider = dataclasses.replace(PRINCIPAL, tags={"team": "sales"})
    assert engine.decide(make_request(catalog, principal=outsider)).code == "no_permit"


def test_evaluation_error_denies_where_cedar_would_allow(engine_for: Make, catalog: Catalog) -> None:
    """A forbid that errors is skipped by Cedar (so Cedar allows); the engine denies."""
    overflow = (
        'forbid (principal, action == Tether::Action::"read", resource)\n'
        "when { context.risk.max_sensitivity_read + 9223372036854775807 > 0 };"
    )
    engine = engine_for({"p.cedar": PERMIT_ALL + overflow})
    request = make_request(catalog, max_sensitivity_read=1)
    bundle = engine.bundle
    raw = cedarpy.is_authorized(
        {
            "principal": {"type": "Tether::Agent", "id": PRINCIPAL.spiffe_id},
            "action": {"type": "Tether::Action", "id": "read"},
            "resource": request.resource.cedar_uid,
            "context": dict(
                request.context,
                call={"__entity": {"type": "Tether::Call", "id": "call"}},
                args={"__entity": {"type": "Tether::Args", "id": "args"}},
            ),
        },
        bundle.policy_set,
        cedarpy.Entities.from_json_str(
            json.dumps(
                [
                    request.resource.cedar_entity(),
                    {
                        "uid": {"type": "Tether::Agent", "id": PRINCIPAL.spiffe_id},
                        "attrs": {"trust_domain": "support.example", "attestation": "jwt-svid"},
                        "parents": [],
                    },
                    {"uid": {"type": "Tether::Call", "id": "call"}, "attrs": {}, "parents": []},
                    {
                        "uid": {"type": "Tether::Args", "id": "args"},
                        "attrs": {"paths": [], "under": [], "hosts": []},
                        "parents": [],
                    },
                ]
            )
        ),
        engine.schema,
    )
    assert raw.decision == cedarpy.Decision.Allow and raw.diagnostics.errors
    result = engine.decide(request)
    assert (result.outcome, result.code) == (Outcome.DENY, "policy_error")
    assert result.errors


def test_malformed_context_denies(engine_for: Make, catalog: Catalog) -> None:
    """A context that does not fit the schema denies with policy_error."""
    engine = engine_for({"p.cedar": PERMIT_ALL})
    request = make_request(catalog)
    broken = dataclasses.replace(request, context={k: v for k, v in request.context.items() if k != "risk"})
    assert engine.decide(broken).code == "policy_error"


def test_unknown_action_denies(engine_for: Make, catalog: Catalog) -> None:
    """An action the schema does not know denies with policy_error."""
    result = engine_for({"p.cedar": PERMIT_ALL}).decide(make_request(catalog, "teleport"))
    assert (result.outcome, result.code) == (Outcome.DENY, "policy_error")


def test_exception_during_evaluation_denies(
    engine_for: Make, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any exception inside the engine is a deny with policy_error, never a raise."""
    engine = engine_for({"p.cedar": PERMIT_ALL})

    def boom(*_: object) -> None:
        raise RuntimeError("cedar fell over")

    monkeypatch.setattr(engine_module, "_evaluate", boom)
    result = engine.decide(make_request(catalog))
    assert (result.outcome, result.code) == (Outcome.DENY, "policy_error")


def test_reload_swaps_the_set(engine_for: Make, write_policies: Write, catalog: Catalog) -> None:
    """A successful reload puts the new set and version in force."""
    engine = engine_for({"p.cedar": PERMIT_ALL})
    old = engine.bundle.version
    bundle = engine.reload(write_policies({"p.cedar": PERMIT_ALL + HARD_FORBID}))
    assert engine.bundle is bundle and bundle.version != old
    assert engine.decide(make_request(catalog, "tool:call", "tickets.comment")).code == "policy_forbid"


def test_reload_keeps_old_set_on_error(engine_for: Make, write_policies: Write, catalog: Catalog) -> None:
    """An invalid set is refused with policy_invalid and the previous set stays in force."""
    engine = engine_for({"p.cedar": PERMIT_ALL})
    before = engine.bundle
    with pytest.raises(PolicyError) as info:
        engine.reload(write_policies({"p.cedar": PERMIT_ALL, "q.cedar": "permit (principal"}))
    assert info.value.code == "policy_invalid"
    assert engine.bundle is before
    assert engine.decide(make_request(catalog)).outcome is Outcome.ALLOW


def test_fresh_start_with_invalid_set_refuses(write_policies: Write, catalog: Catalog) -> None:
    """from_paths raises on an invalid set, so a broker cannot start without policy."""
    with pytest.raises(PolicyError) as info:
        PolicyEngine.from_paths(write_policies({"p.cedar": "forbid"}), catalog)
    assert info.value.code == "policy_invalid"


def test_resource_outside_catalog_is_still_evaluated(engine_for: Make, catalog: Catalog) -> None:
    """A resource the catalog lacks is sent with the request, so its attributes count."""
    engine = engine_for(
        {
            "p.cedar": PERMIT_ALL
            + 'forbid (principal, action, resource) when { resource.egress == "external" };'
        }
    )
    stray = dataclasses.replace(catalog.resources["slack"], id="slack-2")
    result = engine.decide(dataclasses.replace(make_request(catalog), resource=stray))
    assert result.code == "policy_forbid"


def test_resource_conflicting_with_catalog_denies(engine_for: Make, catalog: Catalog) -> None:
    """A resource whose attributes differ from the catalog entry of the same id denies."""
    engine = engine_for({"p.cedar": PERMIT_ALL})
    forged = dataclasses.replace(catalog.resources["slack"], egress="internal")
    result = engine.decide(dataclasses.replace(make_request(catalog), resource=forged))
    assert (result.outcome, result.code) == (Outcome.DENY, "policy_error")


def test_catalog_that_does_not_fit_schema_is_refused(catalog: Catalog) -> None:
    """set_catalog refuses entities that break the schema and keeps the old catalog."""
    engine = PolicyEngine()
    engine.set_catalog(catalog)
    bad = dataclasses.replace(
        catalog,
        resources={"x": dataclasses.replace(catalog.resources["tickets"], id="x", sensitivity="high")},
    )  # type: ignore[arg-type]
    with pytest.raises(PolicyError) as info:
        engine.set_catalog(bad)
    assert info.value.code == "catalog_invalid" and engine.catalog is catalog


def test_decisions_during_reloads_see_one_whole_set(
    engine_for: Make, write_policies: Write, catalog: Catalog
) -> None:
    """Concurrent decisions always see a complete bundle: the outcome matches its version."""
    engine = engine_for({"p.cedar": PERMIT_ALL})
    allow_dir = write_policies({"p.cedar": PERMIT_ALL})
    deny_dir = write_policies({"p.cedar": PERMIT_ALL + HARD_FORBID})
    versions = {
        engine.reload(deny_dir).version: Outcome.DENY,
        engine.reload(allow_dir).version: Outcome.ALLOW,
    }
    request = make_request(catalog, "tool:call", "tickets.comment")
    mismatches: list[object] = []

    def decide_many() -> None:
        for _ in range(200):
            result = engine.decide(request)
            if versions.get(result.policy_version) is not result.outcome:
                mismatches.append(result)

    threads = [threading.Thread(target=decide_many) for _ in range(2)]
    for t in threads:
        t.start()
    for i in range(20):
        engine.reload(deny_dir if i % 2 else allow_dir)
    for t in threads:
        t.join(timeout=30)
    assert not mismatches


def test_result_converts_to_decision(engine_for: Make, catalog: Catalog) -> None:
    """PolicyResult.to_decision carries outcome, reasons, version and code."""
    result = engine_for({"p.cedar": PERMIT_ALL + APPROVAL}).decide(make_request(catalog))
    decision = result.to_decision("d-1", approval_id="a-1")
    assert decision.to_dict()["decision"] == "approval_required"
    assert (decision.approval_id, decision.code, decision.policy_version) == (
        "a-1",
        "approval_required",
        result.policy_version,
    )


def test_principal_from_workload() -> None:
    """A verified Workload maps onto the Agent entity fields."""
    workload = Workload("spiffe://td/agent", "td", "unix", {"team": "x"})
    assert PolicyPrincipal.from_workload(workload) == PolicyPrincipal(
        "spiffe://td/agent", "td", "unix", {"team": "x"}
    )


@pytest.mark.parametrize(
    "build",
    [
        lambda: task_context(intent="x", depth=True),
        lambda: task_context(intent="x", depth=-1),
        lambda: risk_context(max_sensitivity_read=2**63),
        lambda: risk_context(first_use=1),
        lambda: task_context(intent=3),
    ],
)
def test_context_builders_check_types(build: Callable[[], object]) -> None:
    """Builders refuse values Cedar would mistype (bools as numbers, out-of-range Longs)."""
    with pytest.raises(InvalidRequest) as info:
        build()
    assert info.value.code == "context_invalid"


def test_request_is_frozen(catalog: Catalog) -> None:
    """Requests are immutable records."""
    request = make_request(catalog)
    assert isinstance(request, PolicyRequest)
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.action = "write"  # type: ignore[misc]
