"""`trace`: the chain of autonomy of a three-level delegation tree, as JSON and as a Rich tree."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from rich.console import Console

from tether.audit import event as ev
from tether.audit.trace import build_trace, render_tree
from tether.cli import main
from tether.errors import InvalidRequest

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


def _reference_trace(conn, task_id):
    """The trace as it was first built: every row as an `Event` through SQLAlchemy, its hash
    re-computed with `row_hash`, hung under its task one event at a time."""
    from sqlalchemy import select

    from tether.audit.event import Event, row_hash
    from tether.audit.trace import _ENDS, Trace, TraceItem, TraceTask, summarize
    from tether.store import tables as t

    e_ = t.audit_events.c
    root_id = conn.execute(
        select(e_.root_task_id).where(e_.task_id == task_id, e_.root_task_id.is_not(None)).limit(1)
    ).scalar()
    rows = conn.execute(
        select(t.audit_events).where(e_.root_task_id == root_id).order_by(e_.ts, e_.chain, e_.seq)
    ).all()
    tasks: dict[str, TraceTask] = {}
    tampered = []
    for r in rows:
        m = dict(r._mapping)
        e = Event(**{**m, "payload": json.loads(m["payload"])})
        fields = {k: v for k, v in m.items() if k not in ("payload", "hash")}
        intact = row_hash(**fields, payload_text=m["payload"]) == m["hash"]
        if not intact:
            tampered.append((e.chain, e.seq))
        n = tasks.setdefault(
            e.task_id or e.parent_task_id or root_id, TraceTask(e.task_id or e.parent_task_id or root_id)
        )
        if e.type == ev.TASK_OPENED and e.task_id:
            n.agent, n.delegator, n.parent_task_id = e.agent, e.delegator, e.parent_task_id
            n.intent, n.opened_at = e.payload.get("intent"), e.ts
            depth = e.payload.get("depth")
            n.depth = depth if isinstance(depth, int) else None
        elif e.type in _ENDS and e.task_id:
            n.state, n.ended_at = _ENDS[e.type], e.ts
        n.agent = n.agent or (e.agent if e.task_id else None)
        n.items.append(TraceItem(e, summarize(e), intact))
    root = tasks.setdefault(root_id, TraceTask(root_id))
    for tid, n in tasks.items():
        if tid != root_id:
            (tasks.get(n.parent_task_id or "") or root).children.append(n)
    for n in tasks.values():
        n.children.sort(key=lambda c: (c.opened_at or 0.0, c.task_id))
    return Trace(root, len(rows), tampered)


def _rendered(trace) -> str:
    console = Console(width=400, record=True, color_system=None)
    console.print(render_tree(trace))
    return console.export_text()


def test_trace_of_a_branching_tree_with_delegations_is_what_it_was(runtime):
    """Two delegation trees under one root (root → refunder → lookup, and a second refunder
    branch), a refused redemption and a tampered event: JSON and rendering exactly as the
    event-at-a-time build produced them, whichever task of the tree is asked."""
    from tether.broker import AuthorizeRequest, OpenTaskRequest

    from .helpers import grants, sql, workload

    b = runtime.broker
    scope = grants(("tool:call", "billing.refund"), ("read", "crm"), ("read", "billing.invoices"))
    root = b.open_task(
        workload("orchestrator"),
        OpenTaskRequest(
            intent="billing.refund", description="", scope=scope, ttl_seconds=600, delegator=DELEGATOR
        ),
    )
    kids = []
    for name in ("refunder", "lookup", "notifier"):
        d = b.delegate(
            b.verify_token(root.token), root.task.id, workload(name).spiffe_id, grants(("read", "crm")), 300
        )
        kid = b.open_task(workload(name), OpenTaskRequest(None, "", None, 300, delegation=d.id))
        b.authorize(kid.token, AuthorizeRequest("read", "crm.customers"))
        b.authorize(kid.token, AuthorizeRequest("read", "billing.invoices"))  # outside its scope: deny
        kids.append(kid)
    d = b.delegate(
        b.verify_token(kids[0].token),
        kids[0].task.id,
        workload("auditor").spiffe_id,
        grants(("read", "crm")),
        60,
    )
    grand = b.open_task(workload("auditor"), OpenTaskRequest(None, "", None, 60, delegation=d.id))
    b.authorize(grand.token, AuthorizeRequest("read", "crm.customers"))
    with pytest.raises(InvalidRequest):  # refused before policy, and audited as a decision
        b.authorize(grand.token, AuthorizeRequest("read", "crm.notes"))
    b.close_task(kids[1].task.id, by="orchestrator")
    build_tree(runtime)  # another tree in the same log: not part of this one
    sql(
        runtime,
        'UPDATE audit_events SET payload = \'{"outcome":"allow"}\' '
        "WHERE task_id = :t AND type = 'decision'",
        t=kids[2].task.id,
    )
    with runtime.db.read() as conn:
        want = _reference_trace(conn, root.task.id)
        assert want.tampered and len(want.root.children) == 3
        for asked in (root.task.id, kids[0].task.id, grand.task.id):
            got = build_trace(conn, asked)
            assert got.to_dict() == want.to_dict()
            assert _rendered(got) == _rendered(want)
            assert [i.event for c in got.root.children for i in c.items] == [
                i.event for c in want.root.children for i in c.items
            ]


def test_rewritten_event_type_attack_is_flagged_in_a_tree_longer_than_a_fetch_batch(runtime):
    """A tree of more events than one fetch batch (each batch is hashed as it is read, then
    the whole tree sorted): one decision's type rewritten shows as tampered (the body's tail
    is spelled from remembered texts), and JSON and rendering are the event-at-a-time build's."""
    from tether.audit.trace import _CHUNK
    from tether.broker import AuthorizeRequest, OpenTaskRequest

    from .helpers import grants, sql, workload

    b = runtime.broker
    root = b.open_task(
        workload("orchestrator"),
        OpenTaskRequest(
            intent="billing.refund",
            description="",
            scope=grants(("read", "crm")),
            ttl_seconds=600,
            delegator=DELEGATOR,
        ),
    )
    for _ in range(_CHUNK + 10):
        b.authorize(root.token, AuthorizeRequest("read", "crm.customers"))
    sql(
        runtime,
        "UPDATE audit_events SET type = 'approval.granted' WHERE seq = ("
        "SELECT max(seq) FROM audit_events WHERE task_id = :t AND type = 'decision')",
        t=root.task.id,
    )
    with runtime.db.read() as conn:
        want = _reference_trace(conn, root.task.id)
        got = build_trace(conn, root.task.id)
    assert got.events > _CHUNK and len(want.tampered) == 1
    assert got.to_dict() == want.to_dict()
    assert _rendered(got) == _rendered(want)


def test_trace_hash_check_agrees_with_row_hash_on_awkward_text_and_tampering(store_url):
    """The trace spells each body in Python from its columns: quotes, controls, separators,
    non-ASCII, NULLs and a ts in exponent form hash as `row_hash` does, and an edited payload
    (the payload-edit attack) is still not intact."""
    from sqlalchemy import text

    from tether.audit.event import row_hash
    from tether.audit.trace import _COLUMNS, _intact
    from tether.store.db import Database

    from .test_verify_fast import write

    db = Database(store_url)
    db.migrate()
    try:
        chain = write(db, 20)
        with db.begin() as conn:
            conn.execute(text("UPDATE audit_events SET payload = '{}' WHERE seq = 7"))
            conn.execute(text("UPDATE audit_events SET ts = 1e-7 WHERE seq = 9"))  # not re-hashed: edited
        with db.read() as conn:
            rows = conn.exec_driver_sql(f"SELECT {_COLUMNS} FROM audit_events ORDER BY seq").all()
        assert len(rows) == 20 and rows[0][0] == chain.chain_id
        for r in rows:
            fields = dict(zip(_COLUMNS.replace(" ", "").split(","), r, strict=True))
            want = (
                row_hash(
                    **{k: v for k, v in fields.items() if k not in ("payload", "hash")},
                    payload_text=fields["payload"],
                )
                == fields["hash"]
            )
            assert _intact(tuple(r)) is want, fields["seq"]
            assert want is (fields["seq"] not in (7, 9))
    finally:
        db.dispose()


def test_trace_keeps_a_frozen_heap_frozen(runtime):
    """`tether serve` freezes its start-up heap and the console builds traces in that process:
    a trace must not thaw it (the trace hands its own objects to the oldest generation only
    where nothing is frozen)."""
    import gc

    tree = build_tree(runtime)
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with runtime.db.read() as conn:
            assert build_trace(conn, tree.root).events
        # Frozen objects freed meanwhile leave the count; thawing would empty it.
        assert gc.isenabled() and gc.get_freeze_count() > frozen // 2
    finally:
        gc.unfreeze()
