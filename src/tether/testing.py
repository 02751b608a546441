"""Helpers for testing code that uses Tether, and for Tether's own tests.

* :class:`TestTrustDomain` — a throwaway SPIFFE trust domain: an ES256 key, its JWKS
  file, and JWT-SVIDs for any workload in it.
* :func:`make_settings` — a state directory with the example catalog and policies,
  trusting a test trust domain, on the store you name.
* :func:`capture_events` — collect the audit events emitted inside a block.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from tether.audit.chain import capture_events
from tether.config import Settings, load_settings
from tether.identity.jwt import public_jwk, sign_jwt
from tether.runtime import Runtime, init_state_dir

__all__ = ["TestTrustDomain", "capture_events", "make_settings", "start_runtime"]


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


def make_settings(
    state_dir: Path,
    *,
    store_url: str | None = None,
    domain: TestTrustDomain | None = None,
    overrides: Mapping[str, Any] | None = None,
    config_extra: str = "",
) -> Settings:
    """Initialize ``state_dir`` from the examples and return its validated settings."""
    init_state_dir(state_dir)
    text = (state_dir / "tether.toml").read_text()
    if domain is not None:
        # The test domain plays an external issuer (SPIRE): the broker keeps a domain of
        # its own, written to the file so that other processes on this state agree.
        text = text.replace(f'trust_domain = "{domain.name}"', 'trust_domain = "tether.local"')
        domain.write_jwks(state_dir / "test-bundle.jwks.json")
        text += f'\n[[trust_bundles]]\ntrust_domain = "{domain.name}"\njwks_file = "test-bundle.jwks.json"\n'
    (state_dir / "tether.toml").write_text(text + config_extra)
    over = dict(overrides or {})
    # Test agents send no DPoP proofs unless a test asks for them: make DPoP optional here
    # (the product default, `auto`, requires it in `prod`). Pass
    # overrides={"identity": {"dpop": "required"}} to test the production behaviour.
    over["identity"] = {"dpop": "optional", **dict(over.get("identity") or {})}
    if store_url:
        over["store"] = store_url
    return load_settings(state_dir, environ={}, overrides=over)


def start_runtime(settings: Settings, **kwargs: Any) -> Runtime:
    return Runtime.start(settings, **kwargs)
