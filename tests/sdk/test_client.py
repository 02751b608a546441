"""The sync client and task: open/close, authorize, delegate, fail closed."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

import tether.sdk as sdk_pkg
from tether.errors import Conflict, InvalidRequest, Unavailable
from tether.sdk import ApprovalRequired, ApprovalTimeout, Client, Denied, current_task
from tether.sdk.errors import NoActiveTask

TRIAGE = [("read", "crm"), ("read", "tickets"), ("send", "email.send")]
REFUND = [("tool:call", "billing.refund"), ("read", "billing")]


def test_public_api_is_pinned():
    """The SDK's public names are a deliberate list."""
    assert sorted(sdk_pkg.__all__) == sorted(
        [
            "ApprovalRequired",
            "ApprovalTimeout",
            "AsyncClient",
            "AsyncTask",
            "CachedSvid",
            "CallableSvid",
            "Client",
            "Credential",
            "Decision",
            "Delegation",
            "Denied",
            "FileSvid",
            "GuardSpec",
            "NoActiveTask",
            "StaticSvid",
            "SvidSource",
            "Task",
            "WorkloadApiSvid",
            "current_decision",
            "current_task",
            "guard",
            "local_broker",
        ]
    )


def test_with_block_closes_task_on_normal_exit(sdk: Client, task_state: Any):
    """Leaving the block normally closes the task."""
    with sdk.task("support.triage", TRIAGE, ttl=60) as task:
        assert task_state(task.id) == "active"
    assert task_state(task.id) == "closed"


def test_with_block_closes_task_on_exception(sdk: Client, task_state: Any):
    """An exception in the block still closes the task, and the exception propagates."""
    with pytest.raises(KeyError), sdk.task("support.triage", TRIAGE, ttl=60) as task:
        raise KeyError("boom")
    assert task_state(task.id) == "closed"


def test_task_is_current_only_inside_block(sdk: Client):
    """The context variable names the task inside the block and nothing after it."""
    with sdk.task("support.triage", TRIAGE, ttl=60) as task:
        assert current_task() is task
    with pytest.raises(NoActiveTask) as exc:
        current_task()
    assert exc.value.code == "no_active_task"


def test_authorize_allow_returns_decision(sdk: Client):
    """An allowed action returns the decision with its id and policy version."""
    with sdk.task("support.triage", TRIAGE, ttl=60) as task:
        d = task.authorize("read", "tickets.queue")
    assert d.allowed and d.decision_id.startswith("dec_") and d.policy_version


def test_authorize_out_of_scope_raises_denied_with_code(sdk: Client):
    """An action outside the task scope raises Denied with code `out_of_scope` and a decision id."""
    with sdk.task("support.triage", TRIAGE, ttl=60) as task, pytest.raises(Denied) as exc:
        task.authorize("write", "tickets")
    assert exc.value.code == "out_of_scope" and exc.value.decision_id.startswith("dec_")


def test_check_returns_deny_without_raising(sdk: Client):
    """`check` reports a deny as a decision instead of raising."""
    with sdk.task("support.triage", TRIAGE, ttl=60) as task:
        d = task.check("write", "tickets")
    assert d.outcome.value == "deny" and d.code == "out_of_scope"


def test_taint_denial_names_the_policy(sdk: Client):
    """After reading restricted data, an external send is denied by the taint policy."""
    with sdk.task("support.triage", TRIAGE, ttl=60) as task:
        task.authorize("read", "crm.customers")
        with pytest.raises(Denied) as exc:
            task.authorize("send", "email.send")
    assert "taint-no-external-egress" in exc.value.policy_ids


def test_approval_required_carries_approval_id(sdk: Client, approve: Any):
    """A refund raises ApprovalRequired; once approved, the identical call is allowed."""
    with sdk.task("billing.refund", REFUND, ttl=60) as task:
        with pytest.raises(ApprovalRequired) as exc:
            task.authorize("tool:call", "billing.refund", {"ticket_id": "T-1"})
        assert exc.value.code == "approval_required" and exc.value.approval_id.startswith("apr_")
        approve(exc.value.approval_id)
        assert task.authorize("tool:call", "billing.refund", {"ticket_id": "T-1"}).allowed


def test_wait_for_approval_returns_once_granted(sdk: Client, approve: Any, monkeypatch: pytest.MonkeyPatch):
    """With wait_for_approval the call blocks until a human approves, then returns the allow."""
    with sdk.task("billing.refund", REFUND, ttl=60) as task:
        real_check = task.check

        def check_then_approve(*args: Any, **kwargs: Any) -> Any:
            d = real_check(*args, **kwargs)
            if d.approval_id:  # the human approves while the agent waits
                approve(d.approval_id)
            return d

        monkeypatch.setattr(task, "check", check_then_approve)
        d = task.authorize("tool:call", "billing.refund", {"ticket_id": "T-2"}, wait_for_approval=10)
    assert d.allowed


def test_wait_for_approval_times_out(sdk: Client):
    """Nobody approves: ApprovalTimeout (still an ApprovalRequired) after the wait."""
    with sdk.task("billing.refund", REFUND, ttl=60) as task, pytest.raises(ApprovalTimeout) as exc:
        task.authorize("tool:call", "billing.refund", {"ticket_id": "T-3"}, wait_for_approval=0.05)
    assert exc.value.code == "approval_timeout" and exc.value.approval_id


def test_delegate_and_redeem_then_parent_close_cascades(sdk: Client, make_client: Any, task_state: Any):
    """A child redeems a delegation; closing the parent closes the child too."""
    reader = make_client("reader")
    with sdk.task("support.triage", TRIAGE, ttl=60) as parent:
        offer = parent.delegate("spiffe://support.example/reader", [("read", "crm")], ttl=30)
        child = reader.task(delegation=offer)
        assert child.depth == 1 and child.parent_id == parent.id
        assert child.authorize("read", "crm.customers").allowed
    assert task_state(child.id) == "closed"


def test_delegation_wider_than_parent_is_refused(sdk: Client):
    """Delegating more than the task holds raises Forbidden `scope_exceeds_parent`."""
    with sdk.task("support.triage", TRIAGE, ttl=60) as parent, pytest.raises(Exception) as exc:
        parent.delegate("spiffe://support.example/reader", [("write", "crm")], ttl=30)
    assert exc.value.code == "scope_exceeds_parent"  # type: ignore[attr-defined]


def test_redeeming_twice_is_a_conflict(sdk: Client, make_client: Any):
    """A delegation is single-use: the second redeem is `delegation_used`."""
    reader = make_client("reader")
    with sdk.task("support.triage", TRIAGE, ttl=60) as parent:
        offer = parent.delegate("spiffe://support.example/reader", [("read", "crm")], ttl=30)
        reader.task(delegation=offer.id)
        with pytest.raises(Conflict) as exc:
            reader.task(delegation=offer.id)
    assert exc.value.code == "delegation_used"


def test_open_errors_carry_the_broker_code(sdk: Client):
    """An unknown intent comes back as InvalidRequest with the broker's code."""
    with pytest.raises(InvalidRequest) as exc:
        sdk.task("no.such.intent", TRIAGE, ttl=60)
    assert exc.value.code == "unknown_intent"


def test_unreachable_broker_is_unavailable():
    """A broker that cannot be reached raises Unavailable `broker_unreachable`."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    http = httpx.Client(transport=httpx.MockTransport(refuse))
    c = Client("http://broker", svid="x.y.z", audience="a", http=http)
    with pytest.raises(Unavailable) as exc:
        c.task("support.triage", TRIAGE, ttl=60)
    assert exc.value.code == "broker_unreachable"


def _fake_broker(decision_body: Any) -> Client:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/tasks":
            return httpx.Response(
                201,
                json={
                    "task_id": "tsk_1",
                    "task_token": "t",
                    "expires_at": 1e10,
                    "scope": [],
                    "depth": 0,
                    "parent_id": None,
                },
            )
        if request.url.path == "/v1/authorize":
            return (
                httpx.Response(200, json=decision_body)
                if not isinstance(decision_body, bytes)
                else httpx.Response(200, content=decision_body)
            )
        return httpx.Response(200, json={"closed": []})

    return Client(
        "http://broker", svid="x.y.z", audience="a", http=httpx.Client(transport=httpx.MockTransport(handle))
    )


@pytest.mark.parametrize(
    "body", [b"<html>ok</html>", {"decision": "maybe", "decision_id": "d"}, {"ok": True}]
)
def test_unreadable_decision_fails_closed(body: Any):
    """A 200 whose decision cannot be read is Unavailable, never an allow."""
    with _fake_broker(body).task("support.triage", TRIAGE) as task, pytest.raises(Unavailable) as exc:
        task.authorize("read", "crm")
    assert exc.value.code == "bad_broker_response"


def test_task_repr_hides_the_token(sdk: Client):
    """The task token never appears in a repr (logs, tracebacks)."""
    with sdk.task("support.triage", TRIAGE, ttl=60) as task:
        assert task.token not in repr(task)


def test_child_inherits_parent_taint(sdk: Client, make_client: Any):
    """A sub-agent delegated after its tree read restricted data cannot send it externally."""
    reader, notifier = make_client("reader"), make_client("notifier")
    with sdk.task("support.triage", TRIAGE, ttl=60) as parent:
        r = reader.task(delegation=parent.delegate("spiffe://support.example/reader", [("read", "crm")], 30))
        r.authorize("read", "crm.customers")
        offer = parent.delegate("spiffe://support.example/notifier", [("send", "email.send")], 30)
        n = notifier.task(delegation=offer)
        with pytest.raises(Denied) as exc:
            n.authorize("send", "email.send")
    assert "taint-no-external-egress" in exc.value.policy_ids


def test_sdk_task_token_is_dpop_bound_and_useless_alone(sdk: Client, client: Any):
    """By default the SDK binds its task token (RFC 9449): the token without a proof is refused."""
    from tether.sdk.svid import unverified_expiry

    with sdk.task("support.triage", TRIAGE, ttl=60) as task:
        assert task.authorize("read", "tickets.queue").allowed  # the SDK sends a fresh proof each time
        stolen = client.post(
            "/v1/authorize",
            json={"action": "read", "resource": "tickets.queue"},
            headers={"Authorization": f"Bearer {task.token}"},
        )
    assert unverified_expiry(task.token) is not None
    assert stolen.status_code == 401 and stolen.json()["code"] == "dpop_proof_missing"
