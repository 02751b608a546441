"""The broker's ES256 signing keys: kept in the store, private halves encrypted at rest.

The master key that encrypts them comes from ``TETHER_MASTER_KEY`` (base64url, 32 bytes)
or from ``<state>/master.key`` (created 0600 on first start). Rotation keeps the old key
verifying for ``keys.overlap_seconds`` so tokens signed just before a rotation still
verify; ``/.well-known/jwks.json`` publishes every key that still verifies.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_der_private_key,
)
from sqlalchemy import insert, select, update

from tether.errors import ConfigError, Unavailable
from tether.identity.jwt import public_jwk
from tether.store import tables as t
from tether.store.db import Database

MASTER_KEY_ENV = "TETHER_MASTER_KEY"
MASTER_KEY_FILE = "master.key"


def _b64d(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def parse_master_key(text: str, where: str = MASTER_KEY_ENV) -> bytes:
    """32 bytes from their base64url text, or ``config_invalid`` naming ``where``."""
    try:
        key = _b64d(text.strip())
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ConfigError(
            f"`{where}` must be 32 bytes, base64url-encoded", code="config_invalid", field=where
        )
    return key


def load_master_key(state_dir: Path, environ: dict[str, str] | None = None) -> bytes:
    env = os.environ if environ is None else environ
    if env.get(MASTER_KEY_ENV):
        return parse_master_key(env[MASTER_KEY_ENV])
    path = state_dir / MASTER_KEY_FILE
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=") + "\n")
    if path.stat().st_mode & 0o077:
        raise ConfigError(
            f"`{path}` must not be readable by group or others (chmod 600)",
            code="config_invalid",
            field="master.key",
        )
    key = _b64d(path.read_text().strip())
    if len(key) != 32:
        raise ConfigError(f"`{path}` does not hold a 32-byte key", code="config_invalid")
    return key


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    private_key: ec.EllipticCurvePrivateKey
    public_jwk: dict[str, Any]
    created_at: float
    retires_at: float
    expires_at: float
    #: Derived once: every token verification needs it.
    public_key: ec.EllipticCurvePublicKey


class KeyRing:
    """Signing keys of this broker, cached in memory, shared with replicas through the store."""

    ALG = "ES256"

    def __init__(self, db: Database, master_key: bytes, *, rotate_after: int, overlap: int) -> None:
        self._db = db
        self._aead = AESGCM(master_key)
        self._rotate_after = rotate_after
        self._overlap = overlap
        self._keys: dict[str, SigningKey] = {}
        self._lock = threading.Lock()
        self._last_refresh = 0.0

    # -- persistence ---------------------------------------------------------------------
    def _encrypt(self, kid: str, der: bytes) -> bytes:
        nonce = secrets.token_bytes(12)
        return nonce + self._aead.encrypt(nonce, der, kid.encode())

    def _decrypt(self, kid: str, blob: bytes) -> ec.EllipticCurvePrivateKey:
        try:
            der = self._aead.decrypt(blob[:12], blob[12:], kid.encode())
        except Exception as exc:
            raise ConfigError(
                "a signing key cannot be decrypted: wrong master key for this store",
                code="master_key_mismatch",
            ) from exc
        key = load_der_private_key(der, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError("stored signing key is not an EC key", code="key_invalid")
        return key

    def refresh(self) -> None:
        now = time.time()
        with self._db.read() as conn:
            rows = conn.execute(select(t.signing_keys).where(t.signing_keys.c.expires_at > now)).all()
        keys: dict[str, SigningKey] = {}
        for r in rows:
            m = r._mapping
            existing = self._keys.get(m["kid"])
            priv = existing.private_key if existing else self._decrypt(m["kid"], m["private_enc"])
            keys[m["kid"]] = SigningKey(
                m["kid"],
                priv,
                json.loads(m["public_jwk"]),
                m["created_at"],
                m["retires_at"],
                m["expires_at"],
                existing.public_key if existing else priv.public_key(),
            )
        with self._lock:
            self._keys = keys
            self._last_refresh = now

    def create(self) -> SigningKey:
        """Generate a new current key; older ones stop signing now and verify until overlap."""
        now = time.time()
        priv = ec.generate_private_key(ec.SECP256R1())
        kid = secrets.token_urlsafe(12)
        jwk = public_jwk(priv.public_key(), kid)  # the one JOSE layer: tether.identity.jwt
        jwk.update(alg=self.ALG, use="sig")
        der = priv.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
        with self._db.begin() as conn:
            conn.execute(
                update(t.signing_keys)
                .where(t.signing_keys.c.retires_at > now)
                .values(retires_at=now, expires_at=now + self._overlap)
            )
            conn.execute(
                insert(t.signing_keys).values(
                    kid=kid,
                    alg=self.ALG,
                    public_jwk=json.dumps(jwk),
                    private_enc=self._encrypt(kid, der),
                    created_at=now,
                    retires_at=now + self._rotate_after,
                    expires_at=now + self._rotate_after + self._overlap,
                )
            )
        self.refresh()
        return self._keys[kid]

    def ensure_current(self) -> SigningKey:
        """The key to sign with, creating or rotating it when due."""
        self.refresh()
        current = self._current()
        return current if current is not None else self.create()

    def rotate_if_due(self) -> SigningKey | None:
        """Create the next key once the current one is in the last tenth of its life, so
        a replacement is published (JWKS) well before the old key stops signing."""
        self.refresh()
        current = self._current()
        now = time.time()
        if current is None or current.retires_at - now < self._rotate_after / 10:
            return self.create()
        return None

    def list(self) -> list[SigningKey]:
        return sorted(self._keys.values(), key=lambda k: k.created_at)

    def _current(self) -> SigningKey | None:
        now = time.time()
        live = [k for k in self._keys.values() if k.retires_at > now]
        return max(live, key=lambda k: k.created_at) if live else None

    # -- use -----------------------------------------------------------------------------
    def signing_key(self) -> SigningKey:
        key = self._current()
        if key is None:
            # Another replica may have rotated; a missing key means signing must stop.
            self.refresh()
            key = self._current()
        if key is None:
            raise Unavailable("no current signing key; run `tether keys rotate`", code="no_signing_key")
        return key

    def verification_key(self, kid: str) -> ec.EllipticCurvePublicKey | None:
        key = self._keys.get(kid)
        if key is None and time.time() - self._last_refresh > 5:
            # A replica may have rotated; refresh at most every 5 s so unknown kids can't
            # turn every request into a store query.
            self.refresh()
            key = self._keys.get(kid)
        if key is None or key.expires_at <= time.time():
            return None
        return key.public_key

    def verifying_keys(self) -> tuple[SigningKey, ...]:
        """Every key that still verifies, oldest first (what the bundles publish)."""
        now = time.time()
        return tuple(
            sorted((k for k in self._keys.values() if k.expires_at > now), key=lambda k: k.created_at)
        )

    def jwks(self) -> dict[str, Any]:
        now = time.time()
        return {
            "keys": [
                k.public_jwk
                for k in sorted(self._keys.values(), key=lambda k: k.created_at)
                if k.expires_at > now
            ]
        }
