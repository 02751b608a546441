"""The `tether` command against a real broker process: up, admin socket, operator identity."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tether.testing import TestTrustDomain, broker_process

TETHER = str(Path(sys.executable).parent / "tether")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(
    state: Path, *args: str, check: bool = True, user: str | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [TETHER, *args, "--state-dir", str(state)]
    if user:
        cmd = ["runuser", "-u", user, "--", *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise AssertionError(f"{args} failed ({r.returncode}): {r.stdout}\n{r.stderr}")
    return r


@pytest.fixture
def broker():
    # Not under pytest's tmp dir (0700 above it): another uid must be able to reach the
    # admin socket's directory so that peer credentials, not file modes, are what refuse it.
    base = Path(tempfile.mkdtemp(prefix="tether-cli-"))
    base.chmod(0o711)
    domain = TestTrustDomain("support.example")
    try:
        with broker_process(base / "state", domain) as b:
            yield b.state_dir, b.url, domain, b.proc
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _open_task(base: str, domain: TestTrustDomain) -> dict:
    svid = domain.svid("bot", "spiffe://tether.local/tether")
    r = httpx.post(
        base + "/v1/tasks",
        headers={"Authorization": f"Bearer {svid}"},
        json={
            "intent": "support.triage",
            "scope": [{"action": "read", "resource": "tickets.queue"}],
            "ttl_seconds": 300,
        },
    )
    assert r.status_code == 201, r.text
    return r.json()


def test_operator_lists_and_closes_tasks_over_admin_socket(broker):
    """`tether task list --json` sees an agent's task; `tether task close` kills its token."""
    state, base, domain, _ = broker
    task = _open_task(base, domain)
    listed = json.loads(run(state, "task", "list", "--json").stdout)
    assert [t["task_id"] for t in listed] == [task["task_id"]]
    run(state, "task", "close", task["task_id"])
    r = httpx.post(
        base + "/v1/authorize",
        headers={"Authorization": f"Bearer {task['task_token']}"},
        json={"action": "read", "resource": "tickets.queue"},
    )
    assert r.json()["code"] == "task_not_active"


def test_kill_switch_revokes_everything(broker):
    """`tether revoke --all` ends every active task."""
    state, base, domain, _ = broker
    tasks = [_open_task(base, domain) for _ in range(3)]
    out = json.loads(run(state, "revoke", "--all", "--json").stdout)
    assert set(out["revoked"]) == {t["task_id"] for t in tasks} and out["batches"] >= 1


_RAW_CLIENT = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(json.dumps({"op": "task.list", "args": {}}).encode() + b"\\n")
print(s.makefile().readline())
"""


@pytest.mark.skipif(
    os.getuid() != 0 or not Path("/usr/bin/python3").exists(),
    reason="needs root and a system python to run a client as another uid",
)
def test_other_uid_cannot_operate_the_broker(broker):
    """A process of another uid reaching the admin socket is refused by peer credentials."""
    state, *_ = broker
    # Open the file modes wide so that the peer-credential check is what refuses.
    state.chmod(0o755)
    (state / "admin.sock").chmod(0o666)
    r = subprocess.run(
        ["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-c", _RAW_CLIENT, str(state / "admin.sock")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    reply = json.loads(r.stdout)
    assert reply["ok"] is False and reply["error"]["code"] == "operator_forbidden"


def test_policy_reload_refuses_bad_set_and_sighup_reloads_good_one(broker):
    """A bad policy reload fails and keeps the old version; SIGHUP loads a good edit."""
    state, base, _, proc = broker
    before = httpx.get(base + "/readyz").json()["policy_version"]
    bad = state / "policies" / "99-bad.cedar"
    bad.write_text("permit(principal, action, resource) when { ")
    r = run(state, "policy", "reload", "--json", check=False)
    assert r.returncode == 1 and json.loads(r.stdout)["error"]["code"] == "policy_invalid"
    assert httpx.get(base + "/readyz").json()["policy_version"] == before
    bad.write_text('@id("noop") @reason("x")\nforbid(principal, action, resource) when { false };\n')
    proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while httpx.get(base + "/readyz").json()["policy_version"] == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert httpx.get(base + "/readyz").json()["policy_version"] != before


def test_approvals_cli_grants_a_pending_approval(broker):
    """`tether approvals list` shows a pending approval and `tether approve` grants it."""
    state, base, domain, _ = broker
    svid = domain.svid("billing", "spiffe://tether.local/tether")
    task = httpx.post(
        base + "/v1/tasks",
        headers={"Authorization": f"Bearer {svid}"},
        json={"intent": "billing.refund", "scope": [{"action": "tool:call", "resource": "billing.refund"}]},
    ).json()
    auth = {"Authorization": f"Bearer {task['task_token']}"}
    body = {"action": "tool:call", "resource": "billing.refund", "arguments": {"ticket_id": "T-1"}}
    first = httpx.post(base + "/v1/authorize", headers=auth, json=body).json()
    pending = json.loads(run(state, "approvals", "list", "--json").stdout)
    assert [a["approval_id"] for a in pending] == [first["approval_id"]]
    run(state, "approve", first["approval_id"])
    assert httpx.post(base + "/v1/authorize", headers=auth, json=body).json()["decision"] == "allow"


def test_audit_verify_passes_on_a_live_log(broker):
    """`tether audit verify` walks the chain of a running broker and reports it intact."""
    state, base, domain, _ = broker
    _open_task(base, domain)
    out = json.loads(run(state, "audit", "verify", "--json").stdout)
    assert out["ok"] and out["events"] >= 2


def test_invalid_policy_at_start_exits_nonzero_naming_file(tmp_path):
    """`tether serve` with an invalid policy exits non-zero and names the file and line."""
    state = tmp_path / "s"
    run(state, "init")
    (state / "policies" / "50-broken.cedar").write_text(
        "\n\npermit(principal, action, resource) when { oops };\n"
    )
    r = subprocess.run(
        [TETHER, "serve", "--state-dir", str(state), "--listen", f"127.0.0.1:{_free_port()}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0 and "50-broken.cedar" in r.stderr and "3" in r.stderr


def test_operator_commands_without_broker_say_how_to_start_it(tmp_path):
    """With no broker running, operator commands fail with `broker_not_running`."""
    r = run(tmp_path / "none", "task", "list", "--json", check=False)
    assert r.returncode == 3 and json.loads(r.stdout)["error"]["code"] == "broker_not_running"


def test_policy_test_runs_shipped_cases(tmp_path):
    """`tether policy test` runs the shipped YAML cases against the shipped policies."""
    from importlib import resources

    state = tmp_path / "s"
    run(state, "init")
    cases = resources.files("tether") / "examples" / "policy_tests"
    out = json.loads(run(state, "policy", "test", str(cases), "--json").stdout)
    assert out["passed"] and len(out["results"]) >= 10
