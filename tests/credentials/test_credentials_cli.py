"""`tether secrets` and `tether leases` against a real broker process over the admin socket."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tether.testing import TestTrustDomain, broker_process

TETHER = str(Path(sys.executable).parent / "tether")
SECRET = "Bearer sk-cli-test-0123456789"


def _run(state: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [TETHER, *args, "--state-dir", str(state)], capture_output=True, text=True, timeout=60, input=stdin
    )
    assert r.returncode == 0, f"{args}: {r.stdout}\n{r.stderr}"
    return r


@pytest.fixture
def broker(tmp_path):
    domain = TestTrustDomain("support.example")
    with broker_process(tmp_path / "state", domain) as b:
        yield b.state_dir, b.url, domain


def test_secret_set_from_stdin_then_inject_lease_listed_and_revoked(broker):
    """`secrets set` reads stdin; the lease shows in `leases list` and dies with `revoke --task`."""
    state, base, domain = broker
    _run(state, "secrets", "set", "email", stdin=SECRET + "\n")
    listed = _run(state, "secrets", "list", "--json").stdout
    assert "sk-cli" not in listed and json.loads(listed)[0]["name"] == "email"
    svid = domain.svid("bot", "spiffe://tether.local/tether")
    t = httpx.post(
        base + "/v1/tasks",
        headers={"Authorization": f"Bearer {svid}"},
        json={
            "intent": "support.triage",
            "scope": [{"action": "send", "resource": "email.send"}],
            "ttl_seconds": 300,
        },
    ).json()
    d = httpx.post(
        base + "/v1/authorize",
        headers={"Authorization": f"Bearer {t['task_token']}"},
        json={"action": "send", "resource": "email.send"},
    ).json()
    assert d["decision"] == "allow" and "sk-cli" not in json.dumps(d)
    _run(state, "revoke", "--task", t["task_id"])
    rows = json.loads(_run(state, "leases", "list", "--task", t["task_id"], "--json").stdout)
    assert [(r["lease_id"], r["state"]) for r in rows] == [(d["credential"]["lease_id"], "revoked")]
    assert json.loads(_run(state, "leases", "list", "--irrevocable", "--json").stdout) == []
