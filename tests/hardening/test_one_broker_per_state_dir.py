"""A second `tether up` on a running broker's state directory leaves the first intact and
says which broker is running (two real processes)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tether.testing import broker_process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def test_second_broker_on_same_state_dir_is_refused_and_first_keeps_its_sockets(tmp_path, domain):
    """The second start exits non-zero naming the first's pid and address; the first's
    admin and Workload API sockets still answer (they used to be deleted)."""
    state = tmp_path / "state"
    with broker_process(state, domain) as first:
        tether = str(Path(sys.executable).parent / "tether")
        second = subprocess.run(
            [tether, "up", "--state-dir", str(state), "--listen", f"127.0.0.1:{_free_port()}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        out = second.stdout + second.stderr
        assert second.returncode != 0, out
        assert "broker_running" in out and str(first.proc.pid) in out
        assert first.url.removeprefix("http://") in out
        assert _answers(state / "admin.sock") and _answers(state / "workload.sock")
        assert httpx.get(first.url + "/readyz", timeout=5).status_code == 200


def test_restart_after_the_first_broker_stopped_works(tmp_path, domain):
    """The lock dies with its process: a new broker starts on the state directory after."""
    state = tmp_path / "state"
    with broker_process(state, domain):
        pass
    tether = str(Path(sys.executable).parent / "tether")
    port = _free_port()
    proc = subprocess.Popen(
        [tether, "up", "--state-dir", str(state), "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the restarted broker never became ready"
            time.sleep(0.05)  # bounded poll for another process to bind its port
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        if proc.stderr:
            proc.stderr.close()
