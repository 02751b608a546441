"""`tether policy shadow|promote` against a real `tether up` over its admin socket."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tether.testing import BrokerProcess, TestTrustDomain, broker_process

TETHER = str(Path(sys.executable).parent / "tether")
CANDIDATE = """
@id("no-comments")
forbid (principal, action == Tether::Action::"tool:call", resource == Tether::Tool::"tickets.comment");
"""


def cli(state: Path, *args: str) -> tuple[int, dict]:
    r = subprocess.run(
        [TETHER, "policy", *args, "--state-dir", str(state), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return r.returncode, json.loads(r.stdout)


@pytest.fixture(scope="module")
def broker() -> Iterator[tuple[BrokerProcess, TestTrustDomain]]:
    # One broker for the module: starting one is the slow part of these tests.
    base = Path(tempfile.mkdtemp(prefix="tether-shadow-"))
    domain = TestTrustDomain("support.example")
    try:
        with broker_process(base / "state", domain) as b:
            yield b, domain
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_shadow_then_promote_through_the_cli(broker, tmp_path):
    """shadow DIR → a diverging call is counted → promote → the candidate decides, shadow is off."""
    b, domain = broker
    cand = tmp_path / "candidate"
    shutil.copytree(b.state_dir / "policies", cand)
    (cand / "90-candidate.cedar").write_text(CANDIDATE)
    code, on = cli(b.state_dir, "shadow", str(cand))
    assert code == 0 and on["shadow"] == str(cand)

    svid = domain.svid("triage", b.audience)
    task = httpx.post(
        b.url + "/v1/tasks",
        headers={"Authorization": f"Bearer {svid}"},
        json={"intent": "support.triage", "scope": [{"action": "tool:call", "resource": "tickets.comment"}]},
    ).json()
    auth = {"Authorization": f"Bearer {task['task_token']}"}
    body = {"action": "tool:call", "resource": "tickets.comment"}
    assert httpx.post(b.url + "/v1/authorize", headers=auth, json=body).json()["decision"] == "allow"

    code, status = cli(b.state_dir, "shadow")
    assert code == 0 and status["counters"]["by_kind"] == {"allow→deny": 1}

    code, promoted = cli(b.state_dir, "promote")
    assert code == 0 and promoted["policy_version"] == on["shadow_version"]
    assert httpx.get(b.url + "/readyz").json()["policy_version"] == on["shadow_version"]
    assert httpx.post(b.url + "/v1/authorize", headers=auth, json=body).json()["decision"] == "deny"
    assert cli(b.state_dir, "shadow")[1]["shadow"] is None


def test_shadow_of_a_bad_directory_is_refused_over_the_cli(broker, tmp_path):
    """The broker refuses an invalid candidate with `policy_invalid`; nothing is shadowed."""
    b, _ = broker
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.cedar").write_text("permit (principal, action, resource) when { ")
    code, out = cli(b.state_dir, "shadow", str(bad))
    assert code == 1 and out["error"]["code"] == "policy_invalid"
    assert cli(b.state_dir, "shadow")[1]["shadow"] is None
