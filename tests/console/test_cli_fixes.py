"""The CLI as a new user meets it, on a fresh `tether init` with a real `tether up` process."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

BIN = Path(sys.executable).parent
TETHER = str(BIN / "tether")


def tether(state: Path, *args: str, columns: int = 100) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "TETHER_STATE_DIR": str(state),
        "COLUMNS": str(columns),
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }
    return subprocess.run([TETHER, *args], env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """`tether init` as shipped (environment prod, trust domain support.example), then `tether up`."""
    state = tmp_path_factory.mktemp("fresh") / "state"
    assert tether(state, "init", "--state-dir", str(state)).returncode == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [TETHER, "up", "--state-dir", str(state), "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "broker exited"
            try:
                if (
                    httpx.get(url + "/readyz", timeout=1).status_code == 200
                    and (state / "admin.sock").exists()
                ):
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "broker did not start"
            time.sleep(0.05)  # bounded poll for another process
        yield state, url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stderr:
            proc.stderr.close()


def _help_example(text: str) -> str:
    lines = text[text.index("tether workload register") :].splitlines()
    out = []
    for line in lines:
        out.append(line.strip().rstrip("\\").strip())
        if not line.rstrip().endswith("\\"):
            break
    return " ".join(out)


def test_workload_help_example_works_on_a_fresh_init(fresh):
    """The `tether workload --help` example, run as written, registers an entry this process matches."""
    state, _ = fresh
    example = _help_example(tether(state, "workload", "--help").stdout)
    env = {**os.environ, "TETHER_STATE_DIR": str(state), "PATH": f"{BIN}:{os.environ['PATH']}"}
    r = subprocess.run(["bash", "-c", example], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    audience = "spiffe://support.example/tether"
    svid = tether(
        state,
        "svid",
        "fetch",
        "--audience",
        audience,
        "--spiffe-id",
        "spiffe://support.example/agents/triage",
    )
    assert svid.returncode == 0, svid.stderr
    assert svid.stdout.strip().count(".") == 2


def test_tether_console_prints_a_link_that_signs_in_once(fresh):
    """`tether console` gives a link that opens a session once and expires in 60 s."""
    state, _ = fresh
    r = tether(state, "console", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["expires_in"] == 60 and data["uid"] == os.getuid()
    first = httpx.get(data["url"])
    assert first.status_code == 200 and "tether_console=" in first.headers["set-cookie"]
    assert httpx.get(data["url"]).status_code == 401


def test_revoke_all_success_is_not_shown_as_failure(fresh):
    """`tether revoke --all` reports success with a check mark, not a red cross."""
    state, _ = fresh
    r = tether(state, "revoke", "--all")
    assert r.returncode == 0 and "✓" in r.stdout and "✗" not in r.stdout


def _approval(state: Path, url: str) -> str:
    sid = "spiffe://support.example/agents/billing"
    real = os.path.realpath(sys.executable)
    reg = tether(
        state,
        "workload",
        "register",
        sid,
        "--selector",
        f"unix:uid:{os.getuid()}",
        "--selector",
        f"unix:path:{real}",
    )
    assert reg.returncode == 0, reg.stderr
    from tether.sdk import Client, WorkloadApiSvid

    client = Client(
        url,
        audience="spiffe://support.example/tether",
        svid=WorkloadApiSvid(state / "workload.sock", spiffe_id=sid),
    )
    # Left open on purpose (the approval must stay pending); never entered as a block, so
    # the SDK's current-task context variable does not leak into later tests.
    task = client.task("billing.refund", [("tool:call", "billing.refund")], ttl=300)
    d = task.check("tool:call", "billing.refund", {"ticket_id": "T-55", "amount": 5})
    assert d.approval_id, d
    return str(d.approval_id)


def test_ids_are_never_cut_in_narrow_terminals_and_show_has_the_facts(fresh):
    """In a 60-column terminal every id is printed whole; `approvals show` has agent, arguments, why."""
    state, url = fresh
    approval_id = _approval(state, url)
    listing = tether(state, "approvals", "list", columns=60)
    assert listing.returncode == 0
    assert approval_id in listing.stdout.replace("\n", "") and approval_id in listing.stdout
    tasks = tether(state, "task", "list", columns=60)
    for tid in re.findall(
        r"tsk_[A-Za-z0-9_-]+", json.dumps(json.loads(tether(state, "task", "list", "--json").stdout))
    ):
        assert tid in tasks.stdout
    show = tether(state, "approvals", "show", approval_id)
    assert show.returncode == 0, show.stderr
    for needle in ("spiffe://support.example/agents/billing", "T-55", "refunds need a human", "first_use"):
        assert needle in show.stdout


def test_policy_reload_says_when_a_catalog_change_needs_a_restart(fresh):
    """A changed catalog is not silently ignored: the reload says a restart is needed."""
    state, _ = fresh
    assert "restart" not in tether(state, "policy", "reload").stdout
    catalog = state / "catalog.yaml"
    catalog.write_text(
        catalog.read_text().replace("intents:\n", 'intents:\n  support.audit: "new intent"\n', 1)
    )
    r = tether(state, "policy", "reload", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["restart_needed"] is True
    assert "restart the broker" in tether(state, "policy", "reload").stdout
