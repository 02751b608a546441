"""`tether policy replay`: real decisions recorded through the broker, decided again."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from tether.audit import event as ev
from tether.broker import AuthorizeRequest, OpenTaskRequest
from tether.cli import main
from tether.errors import PolicyError
from tether.model import Grant, Workload
from tether.policy.replay import recorded_from_event
from tether.runtime import Runtime
from tether.store import tables as t

DOMAIN = "support.example"
SCOPE = (
    Grant("read", "tickets.queue"),
    Grant("tool:call", "tickets.comment"),
    Grant("tool:call", "slack-external.post"),
    Grant("read", "crm.customers"),
)
#: Refused by the parser (the validator's messages name actions in no fixed order).
BAD_POLICY = "permit (principal, action, resource) when { context.task.depth < };"
CANDIDATE = """
@id("no-comments")
forbid (principal, action == Tether::Action::"tool:call", resource == Tether::Tool::"tickets.comment");

@id("triage-may-post")
permit (principal, action == Tether::Action::"tool:call", resource == Tether::Tool::"slack-external.post")
when { context.task.intent == "support.triage" };

@id("customers-need-approval")
@approval("reading customers needs a human")
forbid (principal, action == Tether::Action::"read", resource == Tether::Dataset::"crm.customers")
unless { context.approval.granted };
"""


@dataclass
class Recorded:
    rt: Runtime
    ids: dict[str, str]


def _authorize(
    rt: Runtime, token: str, action: str, resource: str, args: dict[str, Any] | None = None
) -> Any:
    return rt.broker.authorize(token, AuthorizeRequest(action, resource, args or {}))


def record(rt: Runtime) -> Recorded:
    """Five real decisions of one triage task: three allows, a deny, and a scope refusal."""
    wl = Workload(f"spiffe://{DOMAIN}/triage", DOMAIN, "jwt-svid")
    opened = rt.broker.open_task(wl, OpenTaskRequest("support.triage", "replay", SCOPE, 600))
    tok = opened.token
    ids = {}
    for name, action, resource in (
        ("read", "read", "tickets.queue"),
        ("comment", "tool:call", "tickets.comment"),
        ("post", "tool:call", "slack-external.post"),  # no permit for triage: deny
        ("customers", "read", "crm.customers"),
    ):
        ids[name] = _authorize(rt, tok, action, resource).decision.id
    ids["refund"] = _authorize(rt, tok, "tool:call", "billing.refund").decision.id  # out of scope
    return Recorded(rt, ids)


def candidate_dir(rt: Runtime, tmp_path: Path, extra: str = CANDIDATE, name: str = "candidate") -> Path:
    out = tmp_path / name
    shutil.copytree(rt.settings.policy_path, out)
    (out / "90-candidate.cedar").write_text(extra)
    return out


def replay(rt: Runtime, *args: str) -> tuple[int, dict[str, Any]]:
    res = CliRunner().invoke(
        main,
        [
            "policy",
            "replay",
            *args,
            "--state-dir",
            str(rt.settings.state_dir),
            "--store",
            rt.settings.store_url,
            "--json",
        ],
    )
    return res.exit_code, json.loads(res.output) if res.output.strip() else {}


def _store_marks(rt: Runtime) -> tuple[int, list[tuple[str, int]]]:
    with rt.db.read() as conn:
        n = conn.execute(select(func.count()).select_from(t.audit_events)).scalar_one()
        heads = [
            (str(c), int(s))
            for c, s in conn.execute(select(t.audit_chains.c.chain, t.audit_chains.c.head_seq))
        ]
    return int(n), sorted(heads)


def test_replay_reports_the_exact_flips_of_a_changed_policy(runtime, tmp_path):
    """allow→deny, deny→allow and allow→approval_required, each with its decision and policies."""
    rec = record(runtime)
    code, report = replay(runtime, str(candidate_dir(runtime, tmp_path)), "--since", "1h")
    assert code == 0, report
    ids = rec.ids
    assert (report["decisions"], report["replayed"], report["flips"]) == (5, 4, 3)
    assert report["not_replayable"] == {"before_policy": 1}
    assert report["by_kind"] == {"allow→approval_required": 1, "allow→deny": 1, "deny→allow": 1}
    by_policy = {g["policy"]: (g["count"], g["examples"]) for g in report["by_policy"]}
    assert by_policy == {
        "no-comments": (1, [ids["comment"]]),
        "triage-comment": (1, [ids["comment"]]),
        "triage-may-post": (1, [ids["post"]]),
        "customers-need-approval": (1, [ids["customers"]]),
        "triage-read": (1, [ids["customers"]]),
    }
    assert report["by_agent_intent"] == [
        {
            "agent": f"spiffe://{DOMAIN}/triage",
            "intent": "support.triage",
            "count": 3,
            "by_kind": {"allow→approval_required": 1, "allow→deny": 1, "deny→allow": 1},
            "examples": [ids["comment"], ids["post"], ids["customers"]],
        }
    ]
    sides = {e["decision_id"]: (e["recorded"], e["candidate"]) for e in report["examples"]}
    assert sides[ids["comment"]] == (
        {"outcome": "allow", "policies": ["triage-comment"]},
        {"outcome": "deny", "policies": ["no-comments"]},
    )
    assert sides[ids["post"]] == (
        {"outcome": "deny", "policies": []},
        {"outcome": "allow", "policies": ["triage-may-post"]},
    )
    assert report["inexact"] == 0 and report["catalog_changed"] == 0


def test_replay_never_writes_the_store(runtime, tmp_path):
    """The event count and every chain head are the same after a replay."""
    record(runtime)
    before = _store_marks(runtime)
    code, _ = replay(runtime, str(candidate_dir(runtime, tmp_path)), "--since", "1h")
    assert code == 0 and _store_marks(runtime) == before


def test_flips_over_the_threshold_fail_the_gate(settings, tmp_path):
    """--max-flips: exit 4 when more decisions change than allowed, 0 when within it."""
    rt = Runtime.start(settings)
    try:
        record(rt)
        cand = str(candidate_dir(rt, tmp_path))
        assert replay(rt, cand, "--max-flips", "2")[0] == 4
        assert replay(rt, cand, "--max-flips", "3")[0] == 0
        assert replay(rt, str(rt.settings.policy_path), "--max-flips", "0")[1]["flips"] == 0
    finally:
        rt.close()


def test_bad_candidate_directory_is_refused_with_the_reload_message(runtime, tmp_path):
    """A candidate that does not validate: the same code and message as a reload of it."""
    bad = candidate_dir(runtime, tmp_path, BAD_POLICY)
    with pytest.raises(PolicyError) as reload_error:
        runtime.engine.reload(bad)
    code, out = replay(runtime, str(bad))
    assert code == 1
    assert out["error"]["code"] == "policy_invalid"
    assert out["error"]["message"] == reload_error.value.message


def test_window_with_no_replayable_events_says_so(runtime, tmp_path):
    """Only a decision taken before policy: the report says nothing was replayable; the gate fails."""
    wl = Workload(f"spiffe://{DOMAIN}/triage", DOMAIN, "jwt-svid")
    tok = runtime.broker.open_task(wl, OpenTaskRequest("support.triage", "x", SCOPE[:1], 600)).token
    _authorize(runtime, tok, "tool:call", "billing.refund")
    code, out = replay(runtime, str(runtime.settings.policy_path), "--max-flips", "0")
    assert code == 5
    assert out["message"] == "no replayable decisions in the window"
    assert out["not_replayable"] == {"before_policy": 1}


def test_decisions_recorded_before_schema_v3_are_not_replayable():
    """An event of v2 is reported as such, never guessed, even when it carries an input-like field."""
    assert (
        recorded_from_event(2, {"outcome": "allow", "input": {"action": "read"}}, "dec_1", None)
        == "before_v3"
    )


def test_masked_argument_equality_replays_exactly(settings, tmp_path):
    """A masked argument equal to a candidate's literal replays exactly; another value is inexact."""
    rt = Runtime.start(settings)
    try:
        wl = Workload(f"spiffe://{DOMAIN}/triage", DOMAIN, "jwt-svid")
        tok = rt.broker.open_task(wl, OpenTaskRequest("support.triage", "x", SCOPE, 600)).token
        hit = _authorize(rt, tok, "tool:call", "tickets.comment", {"customer_token": "tok-123"}).decision.id
        _authorize(rt, tok, "tool:call", "tickets.comment", {"customer_token": "tok-999"})
        with rt.db.read() as conn:
            raw = conn.execute(
                select(t.audit_events.c.payload).where(t.audit_events.c.decision_id == hit)
            ).scalar()
        assert "tok-123" not in raw  # masked in the record
        cand = candidate_dir(
            rt,
            tmp_path,
            '@id("blocked-customer")\nforbid (principal, action, resource) when '
            '{ context.call.hasTag("customer_token") && '
            'context.call.getTag("customer_token") == "tok-123" };',
        )
        code, report = replay(rt, str(cand))
        assert code == 0, report
        assert report["by_kind"] == {"allow→deny": 1}
        assert [e["decision_id"] for e in report["examples"]] == [hit]
        assert "inexact" not in report["examples"][0]
        assert report["inexact"] == 1  # tok-999 equals no literal: exact for equality only
    finally:
        rt.close()


def test_decision_event_carries_the_input_cedar_saw(runtime):
    """principal, action, resource, catalog version, task context, risk, environment, call tags."""
    rec = record(runtime)
    with runtime.db.read() as conn:
        e = conn.execute(
            select(t.audit_events.c.v, t.audit_events.c.payload).where(
                t.audit_events.c.decision_id == rec.ids["comment"]
            )
        ).one()
    assert e.v == ev.SCHEMA_VERSION == 3
    inp = json.loads(e.payload)["input"]
    assert inp["principal"] == {
        "id": f"spiffe://{DOMAIN}/triage",
        "trust_domain": DOMAIN,
        "attestation": "jwt-svid",
        "tags": {},
    }
    assert (inp["action"], inp["resource"]) == (
        "tool:call",
        {"type": "Tether::Tool", "id": "tickets.comment"},
    )
    assert inp["catalog"] == runtime.engine.catalog_version
    assert inp["context"]["task"]["intent"] == "support.triage"
    assert set(inp["context"]) == {"task", "risk", "request", "approval", "environment"}
    assert inp["context"]["environment"] == "prod"


def test_a_tag_read_by_a_computed_key_is_never_left_out(settings, tmp_path):
    """`hasTag(<expression>)` may read any tag: replay keeps every one and the flip is found."""
    rt = Runtime.start(settings)
    try:
        wl = Workload(f"spiffe://{DOMAIN}/triage", DOMAIN, "jwt-svid")
        opened = rt.broker.open_task(wl, OpenTaskRequest("support.triage", "x", SCOPE, 600))
        # An argument named like the task id: no policy text can name it, only compute it.
        named = _authorize(rt, opened.token, "tool:call", "tickets.comment", {opened.task.id: "1"})
        _authorize(rt, opened.token, "tool:call", "tickets.comment", {"other": "1"})
        cand = candidate_dir(
            rt,
            tmp_path,
            '@id("computed")\nforbid (principal, action, resource)\n'
            "when { context.call.hasTag(context.task.id) };",
        )
        code, report = replay(rt, str(cand))
        assert code == 0, report
        assert [e["decision_id"] for e in report["examples"]] == [named.decision.id]
    finally:
        rt.close()


def test_replay_prints_a_readable_report(settings, tmp_path):
    """Without --json: the flips, the groups and the example decisions are printed."""
    rt = Runtime.start(settings)
    try:
        rec = record(rt)
        res = CliRunner().invoke(
            main,
            [
                "policy",
                "replay",
                str(candidate_dir(rt, tmp_path)),
                "--state-dir",
                str(rt.settings.state_dir),
                "--store",
                rt.settings.store_url,
            ],
        )
        assert res.exit_code == 0, res.output
        assert "3 flips" in res.output and "1 not replayable: decided before policy" in res.output
        assert rec.ids["comment"] in res.output and "no-comments" in res.output
    finally:
        rt.close()


@pytest.mark.parametrize("command", ["replay", "shadow", "promote"])
def test_policy_change_commands_have_help(command):
    """`tether policy replay|shadow|promote --help` explains the command."""
    res = CliRunner().invoke(main, ["policy", command, "--help"])
    assert res.exit_code == 0 and "Usage:" in res.output and len(res.output) > 200


def test_replay_of_a_missing_sqlite_store_creates_nothing(runtime, tmp_path):
    """A store path that does not exist is an error with a code, and no empty file appears."""
    missing = tmp_path / "none.db"
    res = CliRunner().invoke(
        main,
        [
            "policy",
            "replay",
            str(runtime.settings.policy_path),
            "--state-dir",
            str(runtime.settings.state_dir),
            "--store",
            f"sqlite:///{missing}",
            "--json",
        ],
    )
    assert res.exit_code == 1 and json.loads(res.output)["error"]["code"] == "store_unavailable"
    assert not missing.exists()
