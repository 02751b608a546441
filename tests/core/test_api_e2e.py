"""End to end through the HTTP API, as an agent would drive it."""

from __future__ import annotations

from tether.audit.verify import verify_chains

READ_Q = {"action": "read", "resource": "tickets.queue"}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_agent_journey_open_delegate_authorize_close(client, runtime, make_agent):
    """Open, delegate, authorize (allow, deny, approval, taint), close; the audit chain verifies."""
    orch = make_agent("orchestrator")
    reader = make_agent("reader")
    notifier = make_agent("notifier")
    runtime.credentials.secrets.set("email", "Bearer sk-test-email-upstream")

    r = orch.open(
        [READ_Q, {"action": "read", "resource": "crm"}, {"action": "send", "resource": "email.send"}],
        intent="support.triage",
    )
    assert r.status_code == 201, r.text
    parent = r.json()
    ptok = parent["task_token"]

    # allow: a read inside scope and permitted for the intent
    d = orch.authorize(ptok, "read", "tickets.queue").json()
    assert d["decision"] == "allow" and d["policy_version"].startswith("sha256:")

    # deny: outside the task scope, before any policy runs
    d = orch.authorize(ptok, "read", "billing.invoices").json()
    assert (d["decision"], d["code"]) == ("deny", "out_of_scope")

    # delegate part of the scope to the reader and to the notifier
    r = client.post(
        f"/v1/tasks/{parent['task_id']}/delegations",
        headers=_bearer(ptok),
        json={
            "child": reader.spiffe_id,
            "scope": [{"action": "read", "resource": "crm"}],
            "ttl_seconds": 120,
        },
    )
    assert r.status_code == 201, r.text
    r = reader.open(None, delegation=r.json()["delegation"])
    assert r.status_code == 201, r.text
    child = r.json()
    assert child["depth"] == 1 and child["parent_id"] == parent["task_id"]

    r = client.post(
        f"/v1/tasks/{parent['task_id']}/delegations",
        headers=_bearer(ptok),
        json={
            "child": notifier.spiffe_id,
            "scope": [{"action": "send", "resource": "email.send"}],
            "ttl_seconds": 120,
        },
    )
    notif = notifier.open(None, delegation=r.json()["delegation"]).json()

    # the reader reads restricted customer data: allowed, and it taints the whole tree
    d = reader.authorize(child["task_token"], "read", "crm.customers").json()
    assert d["decision"] == "allow", d

    # taint rule: once confidential data was read, sending externally is forbidden
    d = orch.authorize(ptok, "send", "email.send").json()
    assert d["decision"] == "deny" and "taint-no-external-egress" in [x["policy_id"] for x in d["reasons"]]

    # the sibling notifier did not read anything itself; its own task is untainted
    d = notifier.authorize(notif["task_token"], "send", "email.send").json()
    assert d["decision"] == "allow", d

    # closing the parent closes every descendant and kills their tokens
    r = client.post(f"/v1/tasks/{parent['task_id']}/close", headers=_bearer(ptok))
    assert r.status_code == 200
    assert set(r.json()["closed"]) == {parent["task_id"], child["task_id"], notif["task_id"]}
    d = reader.authorize(child["task_token"], "read", "crm").json()
    assert (d["decision"], d["code"]) == ("deny", "task_not_active")

    with runtime.db.read() as conn:
        report = verify_chains(conn)
    assert report.ok and report.events >= 12


def test_approval_flow_binds_to_arguments_and_is_single_use(client, runtime, make_agent):
    """A granted approval allows the identical call once; other arguments need their own approval."""
    agent = make_agent("billing-bot")
    r = agent.open([{"action": "tool:call", "resource": "billing.refund"}], intent="billing.refund")
    tok = r.json()["task_token"]
    args = {"ticket_id": "T-100", "amount": 25}

    d = agent.authorize(tok, "tool:call", "billing.refund", args).json()
    assert d["decision"] == "approval_required" and d["approval_id"]
    again = agent.authorize(tok, "tool:call", "billing.refund", args).json()
    assert again["approval_id"] == d["approval_id"]  # one pending approval per binding

    runtime.broker.decide_approval(d["approval_id"], grant=True, by="uid:0")

    other = agent.authorize(tok, "tool:call", "billing.refund", {**args, "amount": 9999}).json()
    assert other["decision"] == "approval_required" and other["approval_id"] != d["approval_id"]
    ok = agent.authorize(tok, "tool:call", "billing.refund", args).json()
    assert ok["decision"] == "allow", ok
    after = agent.authorize(tok, "tool:call", "billing.refund", args).json()
    assert after["decision"] == "approval_required"  # consumed: a new approval is needed


def test_rejected_approval_never_allows(client, runtime, make_agent):
    """A rejected approval leaves the call denied pending a new approval."""
    agent = make_agent("billing-bot")
    tok = agent.open([{"action": "tool:call", "resource": "billing.refund"}], intent="billing.refund").json()[
        "task_token"
    ]
    args = {"ticket_id": "T-7"}
    d = agent.authorize(tok, "tool:call", "billing.refund", args).json()
    runtime.broker.decide_approval(d["approval_id"], grant=False, by="uid:0")
    d2 = agent.authorize(tok, "tool:call", "billing.refund", args).json()
    assert d2["decision"] == "approval_required" and d2["approval_id"] != d["approval_id"]


def test_argument_rule_denies_refund_without_ticket(make_agent):
    """Policy sees call arguments: a refund that names no ticket is denied outright."""
    agent = make_agent("billing-bot")
    tok = agent.open([{"action": "tool:call", "resource": "billing.refund"}], intent="billing.refund").json()[
        "task_token"
    ]
    d = agent.authorize(tok, "tool:call", "billing.refund", {"amount": 5}).json()
    assert d["decision"] == "deny" and "refund-needs-ticket" in [x["policy_id"] for x in d["reasons"]]


def test_get_task_shows_children_to_parent(client, make_agent):
    """GET /v1/tasks/{id} shows state, scope and children to the task's own token."""
    orch, reader = make_agent("orchestrator"), make_agent("reader")
    p = orch.open([READ_Q]).json()
    dlg = client.post(
        f"/v1/tasks/{p['task_id']}/delegations",
        headers=_bearer(p["task_token"]),
        json={"child": reader.spiffe_id, "scope": [READ_Q], "ttl_seconds": 60},
    ).json()
    c = reader.open(None, delegation=dlg["delegation"]).json()
    view = client.get(f"/v1/tasks/{p['task_id']}", headers=_bearer(p["task_token"])).json()
    assert view["state"] == "active" and [k["task_id"] for k in view["children"]] == [c["task_id"]]
    child_view = client.get(f"/v1/tasks/{c['task_id']}", headers=_bearer(p["task_token"]))
    assert child_view.status_code == 200  # a parent supervises its children
    sideways = client.get(f"/v1/tasks/{p['task_id']}", headers=_bearer(c["task_token"]))
    assert sideways.json()["code"] == "token_task_mismatch"  # a child cannot read its parent


def test_task_token_shape(runtime, agent):
    """The task token is a txntoken+jwt with txn, scope, tctx, req_wl and the broker audience."""
    import jwt as pyjwt

    body = agent.open([READ_Q]).json()
    header = pyjwt.get_unverified_header(body["task_token"])
    claims = pyjwt.decode(body["task_token"], options={"verify_signature": False})
    assert header["typ"] == "txntoken+jwt" and header["alg"] == "ES256"
    assert claims["txn"] == body["task_id"] and claims["sub"] == agent.spiffe_id
    assert claims["aud"] == runtime.settings.broker_audience
    assert claims["tctx"]["intent"] == "support.triage" and claims["scope"] == "read@tickets.queue"
    assert claims["exp"] == int(body["expires_at"])


def test_delegated_token_carries_act_chain(client, make_agent):
    """A grandchild's token names every delegating agent, nearest first (RFC 8693 act)."""
    a, b, c = make_agent("a"), make_agent("b"), make_agent("c")
    import jwt as pyjwt

    ta = a.open([READ_Q]).json()
    d1 = client.post(
        f"/v1/tasks/{ta['task_id']}/delegations",
        headers=_bearer(ta["task_token"]),
        json={"child": b.spiffe_id, "scope": [READ_Q], "ttl_seconds": 60},
    ).json()
    tb = b.open(None, delegation=d1["delegation"]).json()
    d2 = client.post(
        f"/v1/tasks/{tb['task_id']}/delegations",
        headers=_bearer(tb["task_token"]),
        json={"child": c.spiffe_id, "scope": [READ_Q], "ttl_seconds": 30},
    ).json()
    tc = c.open(None, delegation=d2["delegation"]).json()
    claims = pyjwt.decode(tc["task_token"], options={"verify_signature": False})
    assert claims["act"] == {"sub": b.spiffe_id, "act": {"sub": a.spiffe_id}}
