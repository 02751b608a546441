"""`trace`: the chain of autonomy of a three-level delegation tree, as JSON and as a Rich tree."""

from __future__ import annotations

import json

from click.testing import CliRunner
from rich.console import Console

from tether.audit import event as ev
from tether.audit.trace import build_trace, render_tree
from tether.cli import main

from .helpers import DELEGATOR, build_tree


def test_trace_json_hangs_every_task_under_its_parent(runtime):
    """Root → refunder → lookup, each with its own agent and the delegator; any task finds the whole tree."""
    tree = build_tree(runtime)
    with runtime.db.read() as conn:
        t = build_trace(conn, tree.grandchild).to_dict()  # a leaf finds the root
    root = t["root"]
    child = root["children"][0]
    grand = child["children"][0]
    assert (root["task_id"], child["task_id"], grand["task_id"]) == (tree.root, tree.child, tree.grandchild)
    assert [n["agent"].rsplit("/", 1)[1] for n in (root, child, grand)] == [
        "orchestrator",
        "refunder",
        "lookup",
    ]
    assert t["delegator"] == f"{DELEGATOR.issuer}#{DELEGATOR.subject}"
    assert [n["depth"] for n in (root, child, grand)] == [0, 1, 2]
    assert {n["state"] for n in (root, child, grand)} == {"closed"}  # the close cascaded
    assert t["tampered"] == []


def test_trace_lists_decisions_approval_credential_and_call_in_time_order(runtime):
    """Under the refunder: approval_required, approval requested/granted, allow, credential, call, close."""
    tree = build_tree(runtime)
    with runtime.db.read() as conn:
        child = build_trace(conn, tree.root).to_dict()["root"]["children"][0]
    seen = [
        (e["type"], e["payload"].get("outcome"))
        for e in child["events"]
        if e["type"] != ev.CREDENTIAL_MINTED or e["lease_id"] == "lse_child"
    ]
    wanted = [
        (ev.TASK_OPENED, None),
        (ev.TASK_DELEGATED, None),
        (ev.APPROVAL_REQUESTED, None),
        (ev.DECISION, "approval_required"),
        (ev.APPROVAL_GRANTED, None),
        (ev.DECISION, "allow"),
        (ev.CREDENTIAL_MINTED, None),
        (ev.CALL_FORWARDED, None),
        (ev.CALL_RESULT, None),
        (ev.TASK_CLOSED, None),
    ]
    assert [x for x in seen if x in wanted] == wanted
    ts = [e["ts"] for e in child["events"]]
    assert ts == sorted(ts)
    allow = next(e for e in child["events"] if e["payload"].get("outcome") == "allow")
    assert allow["payload"]["approval_used"] == tree.approval_id


def test_rendered_tree_shows_delegator_agents_and_actions_nested(runtime):
    """The Rich tree nests delegator → orchestrator → refunder → lookup, with the refund under refunder."""
    tree = build_tree(runtime)
    with runtime.db.read() as conn:
        t = build_trace(conn, tree.child)
    console = Console(width=400, record=True, color_system=None)
    console.print(render_tree(t))
    lines = console.export_text().splitlines()

    def line_of(needle: str) -> int:
        return next(i for i, line in enumerate(lines) if needle in line)

    def indent(i: int) -> int:
        return len(lines[i]) - len(lines[i].lstrip(" │├└─"))

    d, o, r, lk = (
        line_of("alice@example.com"),
        line_of("agent spiffe://support.example/orchestrator"),
        line_of("agent spiffe://support.example/refunder"),
        line_of("agent spiffe://support.example/lookup"),
    )
    refund = line_of("decision allow tool:call billing.refund")
    assert d < o < r < lk and indent(d) < indent(o) < indent(r) < indent(lk)
    assert r < refund and indent(refund) == indent(lk)  # an item of the refunder, like its sub-agent
    assert line_of("credential minted jwt billing (lease lse_child)") > refund


def test_trace_flags_a_tampered_event(runtime):
    """An edited event shows up as tampered in the trace (and the CLI exits 1)."""
    from .helpers import sql

    tree = build_tree(runtime)
    sql(
        runtime,
        'UPDATE audit_events SET payload = \'{"outcome":"allow"}\' WHERE task_id = :t '
        "AND type = 'decision'",
        t=tree.grandchild,
    )
    res = CliRunner().invoke(
        main,
        [
            "audit",
            "trace",
            tree.root,
            "--state-dir",
            str(runtime.settings.state_dir),
            "--store",
            runtime.settings.store_url,
            "--json",
        ],
    )
    assert res.exit_code == 1
    assert json.loads(res.output)["tampered"]


def test_trace_of_an_unknown_task_is_not_found(runtime):
    """`trace` of a task with no events exits non-zero with code `task_not_found`."""
    res = CliRunner().invoke(
        main,
        [
            "audit",
            "trace",
            "tsk_nope",
            "--state-dir",
            str(runtime.settings.state_dir),
            "--store",
            runtime.settings.store_url,
            "--json",
        ],
    )
    assert res.exit_code == 1 and json.loads(res.output)["error"]["code"] == "task_not_found"
