"""`tether policy shadow|promote|reload` without `--json` under `--workers`: the human output
says on how many workers the change is in force, one line per worker, names each worker
that did not apply it, and exits 1 then. Worker 0 is a real runtime serving a real admin
socket; worker 1 a real peer socket on it; worker 2 (of 3) never answers."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tether.cli import main
from tether.runtime import Runtime
from tether.server import worker_peers
from tether.server.policy_ops import PEER_OPERATIONS, across_workers
from tether.server.worker_peers import PeerServer, WorkerPeers

FREEZE = '@id("freeze")\nforbid (principal, action, resource);\n'


@pytest.fixture
def store_url(sqlite_url: str) -> str:
    """What is pinned here is the command's output; the operations run on both stores elsewhere."""
    return sqlite_url


def _workers(runtime: Runtime, tmp_path: Path, total: int, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    directory = tmp_path / "peers"
    directory.mkdir(mode=0o700)
    peer = PeerServer(runtime, directory, 1, PEER_OPERATIONS)
    peer.start()
    monkeypatch.setattr(worker_peers, "START_WAIT_SECONDS", 0.3)  # worker 2 is not starting: it is gone
    across_workers(runtime, WorkerPeers(directory, total))
    try:
        yield
    finally:
        peer.close()


@pytest.fixture
def two_of_three(runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield from _workers(runtime, tmp_path, 3, monkeypatch)


@pytest.fixture
def two_of_two(runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield from _workers(runtime, tmp_path, 2, monkeypatch)


def _candidate(runtime: Runtime, tmp_path: Path) -> Path:
    cand = tmp_path / "candidate"
    shutil.copytree(runtime.settings.policy_path, cand)
    (cand / "90-freeze.cedar").write_text(FREEZE)
    return cand


def _policy(state: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["policy", *args, "--state-dir", str(state)], env={"COLUMNS": "250"})


def _flat(out: str) -> str:
    """The output with line breaks folded: the process's console may have been made at
    another width (an earlier test), which wraps a long summary line."""
    return " ".join(out.split())


def _lines(out: str, pattern: str) -> list[str]:
    return [line for line in out.splitlines() if re.search(pattern, line)]


def test_shadow_and_promote_name_the_worker_that_did_not_apply_and_exit_1(
    admin, runtime, two_of_three, tmp_path
):
    """2 of 3: the summary says so, workers 0 and 1 show the version they have in force,
    worker 2 is named with `worker_unreachable`, and the command exits 1."""
    cand = _candidate(runtime, tmp_path)
    shadowed = _policy(admin, "shadow", str(cand))
    assert shadowed.exit_code == 1, shadowed.output
    version = runtime.engine.shadow.version  # type: ignore[union-attr]
    assert f"✗ shadow {version} ({cand})" in _flat(shadowed.output)
    assert "on 2 of 3 workers" in _flat(shadowed.output)
    for w in (0, 1):
        assert len(_lines(shadowed.output, rf"✓ worker {w} \(pid \d+\): {re.escape(version)}$")) == 1
    (missing,) = _lines(shadowed.output, r"worker 2")
    assert "✗ worker 2 did not apply it: worker_unreachable: worker 2 does not answer" in missing

    before = runtime.engine.bundle.version
    promoted = _policy(admin, "promote")
    assert promoted.exit_code == 1, promoted.output
    assert f"✗ policy {version} in force on 2 of 3 workers (was {before})" in _flat(promoted.output)
    assert len(_lines(promoted.output, rf"✓ worker [01] \(pid \d+\): {re.escape(version)}$")) == 2
    assert _lines(promoted.output, r"worker 2 did not apply it: worker_unreachable")


def test_reload_lists_every_worker_and_names_the_missing_one(admin, runtime, two_of_three):
    """`tether policy reload` prints the same per-worker report (and exits 1, as before)."""
    (runtime.settings.policy_path / "90-freeze.cedar").write_text(FREEZE)
    r = _policy(admin, "reload")
    assert r.exit_code == 1, r.output
    assert "in force on 2 of 3 workers" in _flat(r.output)
    assert len(_lines(r.output, r"✓ worker [01] \(pid \d+\): ")) == 2
    assert _lines(r.output, r"✗ worker 2 did not apply it: worker_unreachable")


def test_every_worker_applied_shows_each_and_exits_0(admin, runtime, two_of_two, tmp_path):
    """2 of 2: both workers listed with the version, no worker named as missing, exit 0;
    the shadow status and the shadow's end say the same."""
    cand = _candidate(runtime, tmp_path)
    shadowed = _policy(admin, "shadow", str(cand))
    assert shadowed.exit_code == 0, shadowed.output
    assert "✓ shadow sha256:" in shadowed.output and "on 2 of 2 workers" in _flat(shadowed.output)
    assert "did not apply" not in shadowed.output and "not every worker" not in shadowed.output
    assert len(_lines(shadowed.output, r"✓ worker [01] \(pid \d+\): sha256:")) == 2
    status = _policy(admin, "shadow")
    assert status.exit_code == 0 and "on 2 of 2 workers" in status.output, status.output
    version = runtime.engine.shadow.version  # type: ignore[union-attr]
    promoted = _policy(admin, "promote")
    assert promoted.exit_code == 0, promoted.output
    assert f"✓ policy {version} in force on 2 of 2 workers" in _flat(promoted.output)
    assert len(_lines(promoted.output, rf"✓ worker [01] \(pid \d+\): {re.escape(version)}$")) == 2
    off = _policy(admin, "shadow")
    assert off.exit_code == 0 and "no shadow set on 2 of 2 workers" in off.output, off.output
    assert len(_lines(off.output, r"✓ worker [01] \(pid \d+\): none$")) == 2
