"""The local Workload API over its real Unix socket, and the attestor's PID-reuse defences."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tether import linesocket
from tether.errors import InvalidRequest, TetherError
from tether.identity import admin_ops, attestor
from tether.runtime import Runtime
from tether.sdk import workload as workload_client
from tether.server.admin import Operator
from tether.testing import capture_events

OPERATOR = Operator(uid=0, pid=1)
ME = "spiffe://tether.local/agents/me"
EXE = os.path.realpath(f"/proc/{os.getpid()}/exe")


def register(rt: Runtime, spiffe_id: str = ME, *selectors: str, **attrs: str) -> dict[str, Any]:
    sels = list(selectors) or [f"unix:uid:{os.getuid()}"]
    result: dict[str, Any] = admin_ops.register(
        rt, {"spiffe_id": spiffe_id, "selectors": sels, "attributes": attrs}, OPERATOR
    )
    return result


def sock(rt: Runtime) -> Path:
    path: Path = rt.workload_socket
    return path


def code_of(fn: Any) -> str:
    with pytest.raises(TetherError) as info:
        fn()
    return info.value.code


def test_socket_is_world_writable(runtime: Runtime) -> None:
    """The socket is 0666: any local process may ask, attestation decides."""
    assert stat.S_IMODE(sock(runtime).stat().st_mode) == 0o666


def test_matching_process_gets_es256_svid_with_requested_audience(runtime: Runtime) -> None:
    """A registered uid gets an ES256 JWT-SVID: sub, aud, exp ≤ 5 min, kid of the current key."""
    register(runtime)
    token = workload_client.fetch_svid(sock(runtime), audience=["a", "b"])
    header, payload = (json.loads(base64.urlsafe_b64decode(p + "==")) for p in token.split(".")[:2])
    assert header["alg"] == "ES256" and header["kid"] == runtime.keys.signing_key().kid
    assert payload["sub"] == ME and payload["aud"] == ["a", "b"]
    assert 0 < payload["exp"] - time.time() <= 300


def test_issuance_is_audited_as_workload_attested(runtime: Runtime) -> None:
    """Each SVID issued is a workload.attested event naming the peer's uid, pid and executable."""
    entry = register(runtime)
    with capture_events() as events:
        workload_client.fetch_svid(sock(runtime), audience="x")
    ev = next(e for e in events if e.type == "workload.attested")
    assert ev.agent == ME and ev.payload["entry_id"] == entry["entry_id"]
    assert ev.payload["peer"]["pid"] == os.getpid() and ev.payload["peer"]["path"] == EXE


def test_unregistered_process_is_refused_and_audited(runtime: Runtime) -> None:
    """No matching entry → no_matching_entry, and the refusal is an audited deny."""
    register(runtime, ME, "unix:uid:4242")
    with capture_events() as events:
        assert code_of(lambda: workload_client.fetch_svid(sock(runtime), audience="x")) == "no_matching_entry"
    assert any(e.type == "decision" and e.payload["code"] == "no_matching_entry" for e in events)


def test_every_selector_must_match(runtime: Runtime) -> None:
    """uid matches but the path does not → refused."""
    register(runtime, ME, f"unix:uid:{os.getuid()}", "unix:path:/usr/bin/not-this-one")
    assert code_of(lambda: workload_client.fetch_svid(sock(runtime), audience="x")) == "no_matching_entry"


def test_sha256_selector_matches_executable_digest(runtime: Runtime) -> None:
    """unix:sha256 of this interpreter matches; any other digest does not."""
    digest = hashlib.sha256(Path(EXE).read_bytes()).hexdigest()
    register(runtime, ME, f"unix:uid:{os.getuid()}", f"unix:sha256:{digest}")
    register(runtime, "spiffe://tether.local/other", f"unix:uid:{os.getuid()}", "unix:sha256:" + "0" * 64)
    assert workload_client.fetch_svid(sock(runtime), audience="x").count(".") == 2


def test_several_entries_require_a_choice(runtime: Runtime) -> None:
    """Two matching identities: fetch_svid asks for one; naming it works; naming another is refused."""
    register(runtime, ME)
    register(runtime, "spiffe://tether.local/agents/second")
    assert code_of(lambda: workload_client.fetch_svid(sock(runtime), audience="x")) == "ambiguous_identity"
    assert len(workload_client.fetch_svids(sock(runtime), audience="x")) == 2
    token = workload_client.fetch_svid(
        sock(runtime),
        audience=runtime.settings.broker_audience,
        spiffe_id="spiffe://tether.local/agents/second",
    )
    assert runtime.svids.verify(token).spiffe_id == "spiffe://tether.local/agents/second"
    nope = "spiffe://tether.local/nope"
    assert (
        code_of(lambda: workload_client.fetch_svid(sock(runtime), audience="x", spiffe_id=nope))
        == "no_matching_entry"
    )


def test_bundle_fetch_returns_broker_jwks(runtime: Runtime) -> None:
    """fetch_jwt_bundles returns the broker's keys for its trust domain."""
    bundles = workload_client.fetch_bundles(sock(runtime))
    assert [k["kid"] for k in bundles["tether.local"]["keys"]] == [runtime.keys.signing_key().kid]


def test_own_svid_authenticates_with_entry_attributes(runtime: Runtime) -> None:
    """The broker accepts its own SVIDs; attestation `unix` and entry attributes reach the task."""
    register(runtime, ME, owner="team-a")
    token = workload_client.fetch_svid(sock(runtime), audience=runtime.settings.broker_audience)
    workload = runtime.identity.authenticate(token)
    assert (workload.spiffe_id, workload.attestation) == (ME, "unix")
    assert workload.attributes == {"owner": "team-a"}


@pytest.mark.parametrize(
    ("spiffe_id", "selectors", "code"),
    [
        ("spiffe://tether.local/a", ["unix:path:/usr/bin/python3"], "invalid_selector"),
        ("spiffe://tether.local/a", ["unix:uid:abc"], "invalid_selector"),
        ("spiffe://tether.local/a", ["unix:sha256:xyz", "unix:uid:0"], "invalid_selector"),
        ("spiffe://tether.local/a", ["k8s:ns:default"], "invalid_selector"),
        ("spiffe://tether.local/a", ["unix:path:relative/python", "unix:uid:0"], "invalid_selector"),
        ("spiffe://other.example/a", ["unix:uid:0"], "foreign_trust_domain"),
        ("spiffe://tether.local", ["unix:uid:0"], "invalid_spiffe_id"),
        ("spiffe://tether.local/a?x=1", ["unix:uid:0"], "invalid_spiffe_id"),
    ],
)
def test_bad_registration_is_refused(
    runtime: Runtime, spiffe_id: str, selectors: list[str], code: str
) -> None:
    """Entries need valid selectors, an account selector, and an ID in the broker's own domain."""
    with pytest.raises(InvalidRequest) as info:
        admin_ops.register(runtime, {"spiffe_id": spiffe_id, "selectors": selectors}, OPERATOR)
    assert info.value.code == code


def test_registration_and_removal_are_audited(runtime: Runtime) -> None:
    """register and remove each write an audit event; a removed entry no longer matches."""
    with capture_events() as events:
        entry = register(runtime)
        admin_ops.remove(runtime, {"entry_id": entry["entry_id"]}, OPERATOR)
    assert [e.type for e in events] == ["workload.registered", "workload.removed"]
    assert code_of(lambda: workload_client.fetch_svid(sock(runtime), audience="x")) == "no_matching_entry"


def test_garbage_request_is_a_clean_error(runtime: Runtime) -> None:
    """Non-JSON, unknown op and bad audience get error replies, never a dropped connection."""
    for request, code in (
        ({"op": "nope"}, "unknown_operation"),
        ({"op": "fetch_jwt_svid", "audience": []}, "invalid_audience"),
        ({"op": "fetch_jwt_svid", "audience": ["x"] * 9}, "invalid_audience"),
    ):
        assert code_of(lambda r=request: workload_client.call(sock(runtime), r)) == code  # type: ignore[misc]
    with socket.socket(socket.AF_UNIX) as s:
        linesocket.connect_path(s, sock(runtime))
        s.sendall(b"{not json\n")
        assert b"malformed_json" in s.recv(4096)


# -- attestor ---------------------------------------------------------------------------

CHILD = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
print("connected", flush=True)
cmd = sys.stdin.readline().strip()
if cmd == "exec":
    import os
    os.execv("/bin/sleep", ["sleep", "30"])
"""


@pytest.fixture
def listener(tmp_path: Path) -> Any:
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(tmp_path / "a.sock"))
    srv.listen(4)
    yield srv, str(tmp_path / "a.sock")
    srv.close()


def _child(path: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "connected"
    return proc


@pytest.mark.parametrize("use_pidfd", [True, False], ids=["pidfd", "starttime"])
def test_live_peer_is_attested(listener: Any, use_pidfd: bool) -> None:
    """A live peer yields its pid, uid, executable path and digest, by either defence."""
    srv, path = listener
    proc = _child(path)
    conn, _ = srv.accept()
    try:
        facts = attestor.attest(conn, use_pidfd=use_pidfd)
        assert (facts.pid, facts.uid, facts.path) == (proc.pid, os.getuid(), EXE)
        assert facts.method == ("pidfd" if use_pidfd else "starttime") and facts.sha256
    finally:
        proc.kill()
        proc.wait()
        conn.close()


@pytest.mark.parametrize("use_pidfd", [True, False], ids=["pidfd", "starttime"])
def test_pid_reuse_peer_that_exited_is_refused(listener: Any, use_pidfd: bool) -> None:
    """A peer that exited before attestation (its pid free for reuse) is refused: peer_gone."""
    srv, path = listener
    proc = _child(path)
    conn, _ = srv.accept()
    proc.stdin.close()  # type: ignore[union-attr]
    proc.wait(timeout=10)
    try:
        with pytest.raises(TetherError) as info:
            attestor.attest(conn, use_pidfd=use_pidfd)
        assert info.value.code == "peer_gone"
    finally:
        conn.close()


def test_exec_after_connect_is_detected(listener: Any) -> None:
    """A peer that execs another binary after connecting no longer counts as the attested one."""
    srv, path = listener
    proc = _child(path)
    conn, _ = srv.accept()
    try:
        facts = attestor.attest(conn)
        assert attestor.same_executable(facts)
        proc.stdin.write("exec\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
        deadline = time.monotonic() + 10
        while os.path.realpath(f"/proc/{proc.pid}/exe") == EXE:  # bounded: exec is quick
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert not attestor.same_executable(facts)
    finally:
        proc.kill()
        proc.wait()
        conn.close()
