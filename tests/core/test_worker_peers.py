"""The workers' peer sockets (tether.server.worker_peers) in one process, on a real runtime:
a worker that does not answer is reported, not counted; a peer puts in force only the
version worker 0 did; the peer socket runs its own operations, not the admin table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tether.linesocket import exchange
from tether.server import worker_peers
from tether.server.admin import Operator
from tether.server.policy_ops import PEER_OPERATIONS, across_workers
from tether.server.worker_peers import PeerServer, WorkerPeers

FREEZE = '@id("freeze")\nforbid (principal, action, resource);\n'


@pytest.fixture
def peer(runtime, tmp_path: Path):
    directory = tmp_path / "peers"
    directory.mkdir(mode=0o700)
    server = PeerServer(runtime, directory, 1, PEER_OPERATIONS)
    server.start()
    yield directory
    server.close()


def test_a_worker_that_does_not_answer_is_reported_and_not_counted(runtime, peer, monkeypatch):
    """Three workers, worker 2 never started its socket: the reload is in force on worker 0
    and 1, the reply says 2 of 3 and names worker 2 with `worker_unreachable`."""
    monkeypatch.setattr(worker_peers, "START_WAIT_SECONDS", 0.3)
    (runtime.settings.policy_path / "90-freeze.cedar").write_text(FREEZE)
    across_workers(runtime, WorkerPeers(peer, 3))
    result = runtime.operations["policy.reload"](runtime, {}, Operator(0, 0))
    workers = result["workers"]
    assert (workers["applied"], workers["total"]) == (2, 3)
    assert workers["results"][1]["policy_version"] == result["policy_version"]
    assert workers["results"][2]["error"]["code"] == "worker_unreachable"


def test_a_peer_refuses_a_directory_that_reads_as_another_version(runtime, peer):
    """Worker 0 put version X in force, then the files changed: the peer does not load the
    new files (it would enforce a set worker 0 does not), and keeps its own."""
    before = runtime.engine.bundle.version
    reply = json.loads(
        exchange(
            worker_peers.socket_path(peer, 1),
            {"op": "policy.reload", "args": {"expect_version": "sha256:not-this-one"}},
            timeout=30,
        )
    )
    assert not reply["ok"] and reply["error"]["code"] == "policy_invalid"
    assert runtime.engine.bundle.version == before


def test_the_peer_socket_runs_no_admin_operation(runtime, peer):
    """`revoke` and the other admin operations are not reachable through a peer socket."""
    reply = json.loads(
        exchange(worker_peers.socket_path(peer, 1), {"op": "revoke", "args": {"all": True}}, timeout=30)
    )
    assert not reply["ok"] and reply["error"]["code"] == "invalid_request"
    assert oct(worker_peers.socket_path(peer, 1).stat().st_mode & 0o777) == "0o600"
