"""`tether secrets` and `tether leases` against a real broker process over the admin socket."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tether.testing import TestTrustDomain

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
    state = tmp_path / "state"
    domain = TestTrustDomain("support.example")
    _run(state, "init")
    domain.write_jwks(state / "bundle.jwks.json")
    cfg = (
        (state / "tether.toml")
        .read_text()
        .replace('trust_domain = "support.example"', 'trust_domain = "tether.local"')
    )  # the test domain is external
    cfg += '\n[[trust_bundles]]\ntrust_domain = "support.example"\njwks_file = "bundle.jwks.json"\n'
    (state / "tether.toml").write_text(cfg)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TETHER_IDENTITY__DPOP": "optional"}
    proc = subprocess.Popen(
        [TETHER, "up", "--state-dir", str(state), "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            assert proc.poll() is None, "broker exited early"
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "broker did not become ready"
            time.sleep(0.05)  # bounded poll for another process to bind its port
        yield state, base, domain
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


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
