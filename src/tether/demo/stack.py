"""The demo's moving parts, started for real and stopped on exit.

* a broker (``tether serve``) in its own process on a temporary state directory — the
  embedded default: SQLite, the local Workload API socket, the admin socket;
* the demo workloads registered by an operator over the admin socket (kernel-attested:
  this uid and this Python executable);
* the upstream CRM service in its own process, accepting only tether credentials.

Every wait is bounded; a part that does not come up stops the demo with a clear error.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tether.config import Settings, load_settings
from tether.errors import Unavailable
from tether.runtime import init_state_dir
from tether.server.admin import call

TRUST_DOMAIN = "support.example"  # the shipped example policies are written for this domain
ENVIRONMENT = "dev"
#: The demo's agents and services, each a SPIFFE ID registered for this process's uid + executable.
AGENTS = {
    "orchestrator": f"spiffe://{TRUST_DOMAIN}/agents/orchestrator",
    "reader": f"spiffe://{TRUST_DOMAIN}/agents/reader",
    "notifier": f"spiffe://{TRUST_DOMAIN}/agents/notifier",
    "crm": f"spiffe://{TRUST_DOMAIN}/services/crm",
    "gateway": f"spiffe://{TRUST_DOMAIN}/gateways/mcp-email",
}
_CLI = "import sys; from tether.cli import main; sys.exit(main())"
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll ``check`` until true; fail with ``what`` after ``timeout`` or if ``proc`` died."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
            raise Unavailable(f"{what} exited with status {proc.returncode}: {err}", code="demo_part_failed")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    raise Unavailable(f"{what} did not come up within {timeout:g}s", code="demo_part_failed")


def _config(port: int) -> str:
    return f"""\
# Written by `tether demo`: the embedded default on a temporary state directory.
listen = "127.0.0.1:{port}"
environment = "{ENVIRONMENT}"
trust_domain = "{TRUST_DOMAIN}"

[tasks]
max_ttl_seconds = 600

[gateway]
enforcers = ["{AGENTS["gateway"]}"]
"""


@dataclass
class Stack:
    state_dir: Path
    settings: Settings
    url: str
    crm_url: str = ""
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def admin_socket(self) -> Path:
        return self.settings.admin_socket

    @property
    def workload_socket(self) -> Path:
        ident = getattr(self.settings, "identity", None)
        return self.state_dir / str(getattr(ident, "workload_socket", "") or "workload.sock")

    def admin(self, op: str, args: dict[str, Any] | None = None) -> Any:
        return call(self.admin_socket, op, args or {})

    def spawn(self, args: list[str], what: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "TETHER_STATE_DIR": str(self.state_dir)}
        proc = subprocess.Popen(
            [sys.executable, *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            if proc.stderr:
                proc.stderr.close()
        self.procs.clear()


def _prepare(state_dir: Path, port: int) -> Settings:
    init_state_dir(state_dir)
    (state_dir / "tether.toml").write_text(_config(port))
    # The shipped catalog describes a prod deployment; the demo is a dev one.
    catalog = state_dir / "catalog.yaml"
    catalog.write_text(catalog.read_text().replace("environment: prod", f"environment: {ENVIRONMENT}"))
    return load_settings(state_dir, environ={})


def start_broker(stack: Stack) -> None:
    proc = stack.spawn(["-c", _CLI, "serve", "--state-dir", str(stack.state_dir)], "broker")

    def ready() -> bool:
        return httpx.get(stack.url + "/readyz", timeout=2).status_code == 200 and stack.admin_socket.exists()

    wait_until(ready, START_TIMEOUT, "the broker", proc)
    wait_until(stack.workload_socket.exists, START_TIMEOUT, "the Workload API socket", proc)


def register_workloads(stack: Stack) -> list[dict[str, Any]]:
    """What an operator does once per agent: bind a SPIFFE ID to how its process is attested."""
    selectors = [f"unix:uid:{os.getuid()}", f"unix:path:{os.path.realpath(sys.executable)}"]
    return [
        stack.admin(
            "workload.register",
            {
                "spiffe_id": sid,
                "selectors": selectors,
                "attributes": {"role": name, "environment": ENVIRONMENT},
            },
        )
        for name, sid in AGENTS.items()
    ]


def start_crm(stack: Stack) -> None:
    port = free_port()
    stack.crm_url = f"http://127.0.0.1:{port}"
    cfg = {
        "broker": stack.url,
        "audience": "crm",
        "issuer": stack.settings.broker_issuer,
        "broker_audience": stack.settings.broker_audience,
        "socket": str(stack.workload_socket),
        "spiffe_id": AGENTS["crm"],
    }
    proc = stack.spawn(
        ["-m", "tether.demo.upstream", "--port", str(port), "--config", json.dumps(cfg)], "the CRM service"
    )
    wait_until(
        lambda: httpx.get(stack.crm_url + "/healthz", timeout=2).status_code == 200,
        START_TIMEOUT,
        "the CRM service",
        proc,
    )


@contextlib.contextmanager
def running_stack(state_dir: Path | None = None, *, keep: bool = False) -> Iterator[Stack]:
    """Start everything; stop every process (and remove the temp dir unless ``keep``) on exit."""
    tmp = Path(tempfile.mkdtemp(prefix="tether-demo-")) if state_dir is None else state_dir
    port = free_port()
    stack = Stack(tmp, _prepare(tmp, port), f"http://127.0.0.1:{port}")
    try:
        start_broker(stack)
        yield stack
    finally:
        stack.stop()
        if state_dir is None and not keep:
            shutil.rmtree(tmp, ignore_errors=True)
