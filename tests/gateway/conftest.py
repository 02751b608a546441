"""Fixtures for the gateway tests: a real upstream process and credential stand-ins.

``upstream``          a uvicorn process on loopback running ``upstream_app.py``; ``.url``,
                      ``.seen()`` (what it received), ``.reset()``
``credentials``       the real connectors (issue 4) with an ``inject`` secret set, or a
                      stand-in allow hook following the same contract when they are
                      not wired
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tether.broker import IssuedCredential
from tether.testing import TestTrustDomain, make_settings

HERE = Path(__file__).parent
GATEWAY_PATH = "gateways/edge"  # the SPIFFE path of the remote gateway in these tests
FAKE_JWT = "upstream-jwt-for-"
FAKE_SECRET = "xoxb-injected-upstream-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 15.0) -> None:
    """Bounded wait until ``url`` answers (the process is up), else fail."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            with socket.socket() as s:  # block on connect, not on a sleep
                s.settimeout(0.2)
                with contextlib.suppress(OSError):
                    s.connect(("127.0.0.1", int(url.rsplit(":", 1)[1].split("/")[0])))


class Upstream:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def seen(self) -> list[dict[str, Any]]:
        return list(httpx.get(self.url + "/_seen").json())

    def reset(self) -> None:
        httpx.get(self.url + "/_reset")


@pytest.fixture
def settings(tmp_path: Path, store_url: str, domain: TestTrustDomain) -> Any:
    """The shared broker settings, plus a configured remote enforcement point. DPoP is
    optional here so most tests can use plain bearer task tokens; DPoP has its own tests."""
    extra = (
        f'\n[gateway]\nenforcers = ["{domain.spiffe_id(GATEWAY_PATH)}"]\n\n[identity]\ndpop = "optional"\n'
    )
    return make_settings(
        tmp_path / "state",
        store_url=store_url,
        domain=domain,
        overrides={"environment": "prod"},
        config_extra=extra,
    )


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(HERE / "upstream_app.py"), str(port)])
    try:
        up = Upstream(port)
        wait_http(up.url + "/_seen")
        yield up
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def credentials(runtime: Any) -> str:
    """Credentials for allowed calls; returns which kind is in use (``real`` or ``fake``).

    With the credentials layer wired (issue 4), its real connectors mint them: a tether
    JWT for ``jwt`` services and the stored secret (set here) for ``inject`` ones. Without
    it, a stand-in allow hook issues credentials that follow the same contract.
    """
    creds = runtime.credentials
    if creds is not None:
        creds.secrets.set("slack-external", FAKE_SECRET, header="X-Api-Key")
        return "real"

    def hook(u: Any, task: Any, resource: Any, req: Any, decision: Any) -> IssuedCredential | None:
        lease = f"lse_test_{resource.id}"
        if resource.connector == "jwt":
            return IssuedCredential(
                lease,
                for_agent={
                    "kind": "jwt",
                    "token": FAKE_JWT + resource.service,
                    "expires_at": task.expires_at,
                    "audience": resource.service,
                },
            )
        if resource.connector == "inject":
            return IssuedCredential(
                lease,
                for_agent={"kind": "inject", "expires_at": task.expires_at},
                for_enforcer={"kind": "inject", "header": "X-Api-Key", "value": FAKE_SECRET},
            )
        return None

    runtime.broker.allow_hooks.append(hook)
    return "fake"
