"""The console on the in-memory app: who may see and do what, and what the pages show."""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

import pytest

from tether.audit import event as ev
from tether.errors import PolicyError
from tether.testing import capture_events

from .conftest import csrf_of, sign_in


def _refund_approval(make_agent, **extra_args):
    agent = make_agent("billing-bot")
    r = agent.open(
        [{"action": "tool:call", "resource": "billing.refund"}],
        intent="billing.refund",
        description="<script>alert('desc')</script>",
    )
    task = r.json()
    args = {"ticket_id": "T-7", "amount": 25, **extra_args}
    d = agent.authorize(task["task_token"], "tool:call", "billing.refund", args).json()
    assert d["decision"] == "approval_required"
    return agent, task, args, d["approval_id"]


def test_no_session_gets_the_login_page_never_data(client, make_agent):
    """Without a session every page redirects to sign-in and no task data leaves."""
    agent = make_agent("orchestrator")
    task_id = agent.open([{"action": "read", "resource": "tickets"}]).json()["task_id"]
    for path in ("/console/tasks", f"/console/tasks/{task_id}", "/console/approvals", "/console/audit"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/console/login")
        assert task_id not in client.get(path).text
    assert client.get("/console/events", headers={"Accept": "text/event-stream"}).status_code == 401
    assert client.post("/console/kill/execute", data={"what": "everything"}).status_code == 401


def test_login_link_is_single_use(client, runtime):
    """A `tether console` link signs in once; a second use is refused and audited."""
    link = runtime.console.operator_link(os.getuid())
    path = "{0.path}?{0.query}".format(urlsplit(link))
    assert client.get(path).status_code == 200
    client.cookies.clear()
    with capture_events() as events:
        again = client.get(path)
    assert again.status_code == 401 and "login_link_invalid" in again.text
    assert [e.payload["action"] for e in events if e.type == ev.CONSOLE_REFUSED] == ["login_link"]


def test_forged_login_link_is_refused(client, runtime):
    """A link whose seal does not check out signs nobody in."""
    link = runtime.console.operator_link(os.getuid())
    body, mac = urlsplit(link).query[2:].split(".")
    forged = client.get(f"/console/auth/link?t={body}.{mac[::-1]}")
    assert forged.status_code == 401
    assert client.get("/console/tasks", follow_redirects=False).status_code == 303


def test_session_cookie_is_httponly_samesite_strict(client, runtime):
    """The session cookie is HttpOnly, SameSite=Strict and scoped to the console."""
    link = runtime.console.operator_link(os.getuid())
    r = client.get("{0.path}?{0.query}".format(urlsplit(link)))
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/console" in cookie


def test_pages_carry_a_strict_csp(operator):
    """Every page forbids inline script and framing."""
    r = operator.get("/console/tasks")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-frame-options"] == "DENY"


def test_csrf_less_post_is_refused(operator, runtime, make_agent):
    """A POST without the session's CSRF token changes nothing and is audited."""
    _, _, _, approval_id = _refund_approval(make_agent)
    with capture_events() as events:
        r = operator.post(f"/console/approvals/{approval_id}", data={"decision": "approve"})
    assert r.status_code == 403 and "csrf_failed" in r.text
    assert runtime.broker.list_approvals("pending")[0].id == approval_id
    assert any(e.type == ev.CONSOLE_REFUSED and e.payload["action"] == "csrf_check" for e in events)


def test_cross_site_post_with_a_stolen_token_is_refused(operator, make_agent):
    """A form posted from another origin is refused even with a valid token."""
    _, _, _, approval_id = _refund_approval(make_agent)
    token = csrf_of(operator, f"/console/approvals/{approval_id}")
    r = operator.post(
        f"/console/approvals/{approval_id}",
        data={"decision": "approve", "csrf": token},
        headers={"Origin": "https://evil.example"},
    )
    assert r.status_code == 403


def test_approve_names_the_human_and_the_call_then_runs(operator, runtime, make_agent):
    """Approving in the console records who approved (and the comment); the identical call is allowed."""
    agent, task, args, approval_id = _refund_approval(make_agent)
    token = csrf_of(operator, f"/console/approvals/{approval_id}")
    r = operator.post(
        f"/console/approvals/{approval_id}",
        data={"decision": "approve", "csrf": token, "comment": "ticket checked"},
    )
    assert r.status_code == 200 and "granted" in r.text
    uid = f"uid:{os.getuid()}"
    assert uid in r.text and "ticket checked" in r.text
    decided = runtime.broker.list_approvals("granted")[0]
    assert decided.decided_by.startswith(uid)
    again = agent.authorize(task["task_token"], "tool:call", "billing.refund", args).json()
    assert again["decision"] == "allow"


def test_approval_page_shows_what_a_human_needs(operator, make_agent):
    """Agent, task, intent, action, resource, masked arguments, risk and the @approval message."""
    _, task, _, approval_id = _refund_approval(make_agent, api_key="sk-live-123456")
    page = operator.get(f"/console/approvals/{approval_id}").text
    for needle in (
        "spiffe://support.example/billing-bot",
        task["task_id"],
        "billing.refund",
        "tool:call",
        "refunds need a human",
        "T-7",
        "first_use",
    ):
        assert needle in page
    assert "sk-live-123456" not in page and "[masked]" in page


def test_xss_payloads_in_agent_fields_are_inert(operator, make_agent):
    """`<script>` and `javascript:` from agents are escaped text, never markup or links."""
    _, task, _, approval_id = _refund_approval(
        make_agent, note="<script>alert('args')</script>", link="javascript:alert(1)"
    )
    for path in (f"/console/approvals/{approval_id}", f"/console/tasks/{task['task_id']}", "/console/audit"):
        page = operator.get(path).text
        assert "<script>alert" not in page
        assert not re.search(r"""(href|src|action)\s*=\s*["']?\s*javascript:""", page, re.I)
        assert re.findall(r"<script\b[^>]*>", page) == ['<script src="/console/static/console.js" defer>']


def test_task_page_draws_the_delegation_tree(operator, make_agent):
    """The task page has an SVG node per task of the tree, linked to each task."""
    parent_agent = make_agent("orchestrator")
    parent = parent_agent.open([{"action": "read", "resource": "crm"}]).json()
    child_agent = make_agent("reader")
    d = parent_agent.client.post(
        f"/v1/tasks/{parent['task_id']}/delegations",
        json={
            "child": child_agent.spiffe_id,
            "scope": [{"action": "read", "resource": "crm.customers"}],
            "ttl_seconds": 60,
        },
        headers={"Authorization": f"Bearer {parent['task_token']}"},
    ).json()
    child = child_agent.client.post(
        "/v1/tasks",
        json={"delegation": d["delegation"]},
        headers={"Authorization": f"Bearer {child_agent.svid()}"},
    ).json()
    page = operator.get(f"/console/tasks/{child['task_id']}").text
    svg = page[page.index("<svg") : page.index("</svg>")]
    assert svg.count('class="node') == 2 and f'data-task="{parent["task_id"]}"' in svg
    assert f'href="/console/tasks/{child["task_id"]}"' in svg and 'class="edge"' in svg


def test_task_filters(operator, make_agent):
    """The task list filters by agent, intent and state; ids are shown whole."""
    a = make_agent("orchestrator").open([{"action": "read", "resource": "tickets"}]).json()["task_id"]
    b = (
        make_agent("billing-bot")
        .open([{"action": "tool:call", "resource": "billing.refund"}], intent="billing.refund")
        .json()["task_id"]
    )
    page = operator.get("/console/tasks?intent=billing.refund").text
    assert b in page and a not in page
    page = operator.get("/console/tasks?agent=orchestrator&state=active&fragment=1").text
    assert a in page and b not in page and "<html" not in page
    assert operator.get("/console/tasks?state=bogus").status_code == 400


def test_kill_switch_confirms_then_revokes_and_measures(operator, runtime, make_agent):
    """Preview names what will be revoked; executing revokes it, names the human and reports the time."""
    tid = make_agent("orchestrator").open([{"action": "read", "resource": "tickets"}]).json()["task_id"]
    token = csrf_of(operator, "/console/kill")
    preview = operator.post("/console/kill/preview", data={"csrf": token, "what": "task", "target": tid})
    assert preview.status_code == 200 and "Confirm" in preview.text and tid in preview.text
    assert runtime.broker.get_task(tid)[0].state.value == "active"  # nothing happened yet
    with capture_events() as events:
        done = operator.post("/console/kill/execute", data={"csrf": token, "what": "task", "target": tid})
    assert done.status_code == 200 and "Every lease revoked" in done.text
    assert runtime.broker.get_task(tid)[0].state.value == "revoked"
    revoked = [e for e in events if e.type == ev.TASK_REVOKED]
    assert revoked and revoked[0].payload["by"].startswith(f"uid:{os.getuid()}")
    action = next(e for e in events if e.type == ev.CONSOLE_ACTION)
    assert action.payload["action"] == "kill_switch" and action.payload["revoked_in_ms"] >= 0


def test_policy_page_shows_history_and_diff(operator, runtime):
    """After a reload the page shows both versions and the diff between them."""
    old = runtime.engine.bundle.version
    extra = runtime.settings.policy_path / "90-extra.cedar"
    extra.write_text(
        '@id("extra")\npermit (principal, action == Tether::Action::"read", resource) when { false };\n'
    )
    new = runtime.reload_policy()
    runtime.periodic[-1]()  # the console's snapshot job (the reaper runs it in a real broker)
    page = operator.get(f"/console/policy?a={old}&b={new}").text
    assert new in page and old in page and "+@id(&#34;extra&#34;)" in page


def test_policy_page_shows_the_last_reload_error(operator, runtime):
    """A refused reload is shown with its error while the old version stays in force."""
    (runtime.settings.policy_path / "99-bad.cedar").write_text("permit (principal, action, resource")
    with pytest.raises(PolicyError):
        runtime.reload_policy()
    page = operator.get("/console/policy").text
    assert "failed at" in page and runtime.engine.bundle.version in page


def test_decisions_stream_shows_outcome_code_policy_and_latency(operator, make_agent):
    """The decisions page lists each decision with its outcome, code, policy ids and latency."""
    _refund_approval(make_agent)
    page = operator.get("/console/decisions?outcome=approval_required").text
    assert "refund-needs-approval" in page and "approval_required" in page
    assert re.search(r"\d+\.\d ms", page)
    assert "outcome-allow" not in page  # the filter holds


def test_audit_page_verifies_the_chains(operator):
    """Verification on the audit page reports an intact chain and is itself audited."""
    with capture_events() as events:
        page = operator.get("/console/audit?verify=1").text
    assert "every chain verifies" in page
    assert any(e.type == ev.CONSOLE_ACTION and e.payload["action"] == "audit.verify" for e in events)


def test_sign_out_ends_the_session(operator):
    """After signing out the same cookie no longer opens pages."""
    token = csrf_of(operator, "/console/tasks")
    cookie = operator.cookies.get("tether_console")
    operator.post("/console/logout", data={"csrf": token})
    operator.cookies.set("tether_console", cookie, path="/console")
    assert operator.get("/console/tasks", follow_redirects=False).status_code == 303


def test_sign_in_is_audited_naming_the_uid(client, runtime):
    """A login-link sign-in is an audit event naming `uid:N` and the user name."""
    with capture_events() as events:
        sign_in(client, runtime)
    signin = [e for e in events if e.type == ev.CONSOLE_SIGNIN]
    assert signin and signin[0].payload["human"].startswith(f"uid:{os.getuid()}")


def test_task_page_shows_drift_from_the_baseline(operator, agent):
    """The task page says cold start until three tasks closed, then names the action new for the intent."""
    queue, customers = (
        {"action": "read", "resource": "tickets.queue"},
        {"action": "read", "resource": "crm.customers"},
    )
    first = agent.open([queue]).json()
    assert "Cold start: 0 of 3" in operator.get(f"/console/tasks/{first['task_id']}").text
    for _ in range(3):
        t = agent.open([queue]).json()
        agent.authorize(t["task_token"], "read", "tickets.queue")
        agent.client.post(
            f"/v1/tasks/{t['task_id']}/close", headers={"Authorization": f"Bearer {t['task_token']}"}
        )
    task = agent.open([queue, customers]).json()
    assert agent.authorize(task["task_token"], "read", "crm.customers").json()["decision"] == "allow"
    page = operator.get(f"/console/tasks/{task['task_id']}").text
    drift = page[page.index("<h2>Drift</h2>") : page.index("<h2>Leases</h2>")]
    assert "Highest drift score <strong>60</strong>" in drift and "<td>crm.customers</td>" in drift
