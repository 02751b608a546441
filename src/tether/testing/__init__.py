"""Helpers for testing code that uses Tether, and for Tether's own tests.

* :class:`TestTrustDomain` — a throwaway SPIFFE trust domain: an ES256 key, its JWKS
  file, and JWT-SVIDs for any workload in it.
* :func:`make_settings` — a state directory with the example catalog and policies,
  trusting a test trust domain, on the store you name.
* :func:`broker_process` — a real ``tether up`` process on such a state directory.
* :func:`capture_events` — collect the audit events emitted inside a block.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import ec

from tether.audit.chain import capture_events
from tether.config import Settings, load_settings
from tether.identity.jwt import public_jwk, sign_jwt
from tether.runtime import Runtime, init_state_dir

__all__ = [
    "BrokerProcess",
    "TestTrustDomain",
    "broker_process",
    "capture_events",
    "make_settings",
    "prepare_state",
    "start_runtime",
]

#: The broker's own trust domain in test states (the test domain is an external issuer).
BROKER_DOMAIN = "tether.local"


class TestTrustDomain:
    """A trust domain whose signing key the test holds (a stand-in for SPIRE)."""

    __test__ = False  # not a pytest test class

    def __init__(self, name: str = "agents.test") -> None:
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.kid = secrets.token_hex(8)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [public_jwk(self.key.public_key(), self.kid)]}

    def write_jwks(self, path: Path) -> Path:
        path.write_text(json.dumps(self.jwks()))
        return path

    def spiffe_id(self, path: str) -> str:
        return f"spiffe://{self.name}/{path.lstrip('/')}"

    def svid(
        self,
        workload: str,
        audience: str,
        *,
        ttl: int = 300,
        now: float | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        """A JWT-SVID for ``workload`` (a SPIFFE ID or a path in this domain)."""
        sub = workload if workload.startswith("spiffe://") else self.spiffe_id(workload)
        t = int(time.time() if now is None else now)
        claims = {"sub": sub, "aud": [audience], "exp": t + ttl, "iat": t, **(extra or {})}
        return sign_jwt(claims, self.key, kid=self.kid, typ="JWT")


def prepare_state(state_dir: Path, domain: TestTrustDomain | None = None, config_extra: str = "") -> None:
    """Initialize ``state_dir`` from the examples, trusting ``domain`` as an external issuer."""
    init_state_dir(state_dir)
    text = (state_dir / "tether.toml").read_text()
    if domain is not None:
        # The test domain plays an external issuer (SPIRE): the broker keeps a domain of
        # its own, written to the file so that other processes on this state agree.
        text = text.replace(f'trust_domain = "{domain.name}"', f'trust_domain = "{BROKER_DOMAIN}"')
        domain.write_jwks(state_dir / "test-bundle.jwks.json")
        text += f'\n[[trust_bundles]]\ntrust_domain = "{domain.name}"\njwks_file = "test-bundle.jwks.json"\n'
    (state_dir / "tether.toml").write_text(text + config_extra)


#: Store budget for test brokers (see :func:`make_settings`); also exported to brokers
#: started as processes by :func:`broker_process`.
TEST_STORE_TIMEOUT_MS = 30_000


def make_settings(
    state_dir: Path,
    *,
    store_url: str | None = None,
    domain: TestTrustDomain | None = None,
    overrides: Mapping[str, Any] | None = None,
    config_extra: str = "",
) -> Settings:
    """Initialize ``state_dir`` from the examples and return its validated settings."""
    prepare_state(state_dir, domain, config_extra)
    over = dict(overrides or {})
    # Test agents send no DPoP proofs unless a test asks for them: make DPoP optional here
    # (the product default, `auto`, requires it in `prod`). Pass
    # overrides={"identity": {"dpop": "required"}} to test the production behaviour.
    over["identity"] = {"dpop": "optional", **dict(over.get("identity") or {})}
    # The production store budget (2 s) is a latency promise on a healthy host; test hosts
    # run many brokers on few cores, where a fixture's transaction can legitimately wait
    # longer. Tests about the budget pass their own `limits.store_timeout_ms`.
    over["limits"] = {"store_timeout_ms": TEST_STORE_TIMEOUT_MS, **dict(over.get("limits") or {})}
    if store_url:
        over["store"] = store_url
    return load_settings(state_dir, environ={}, overrides=over)


@dataclass(frozen=True)
class BrokerProcess:
    state_dir: Path
    url: str
    proc: subprocess.Popen[bytes]

    @property
    def audience(self) -> str:
        return f"spiffe://{BROKER_DOMAIN}/tether"


@contextlib.contextmanager
def broker_process(
    state_dir: Path, domain: TestTrustDomain, *, config_extra: str = "", timeout: float = 120
) -> Iterator[BrokerProcess]:
    """A real ``tether up`` on a free loopback port, trusting ``domain``; stopped on exit.

    DPoP is optional there (plain bearer task tokens), like :func:`make_settings`.
    """
    prepare_state(state_dir, domain, '\n[identity]\ndpop = "optional"\n' + config_extra)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tether = str(Path(sys.executable).parent / "tether")
    proc = subprocess.Popen(
        [tether, "up", "--state-dir", str(state_dir), "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                raise RuntimeError(f"broker exited early: {out}")
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("broker did not become ready")
            time.sleep(0.05)  # bounded poll for another process to bind its port
        yield BrokerProcess(state_dir, url, proc)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stdout:
            proc.stdout.close()


def start_runtime(settings: Settings, **kwargs: Any) -> Runtime:
    return Runtime.start(settings, **kwargs)
