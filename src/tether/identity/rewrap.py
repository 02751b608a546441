"""Re-encrypt everything the master key protects under a new master key, in one transaction.

The master key wraps two things in the store: the private halves of the signing keys
(``signing_keys.private_enc``, AAD = kid) and the stored upstream secrets
(``credential_secrets.value_enc``, AAD = ``tether-secret:<name>``). Rewrapping decrypts each
with the old key and encrypts it with a fresh nonce under the new one; the keys
themselves do not change, so every token, SVID, credential and checkpoint signed before
still verifies. Either every row is rewrapped or none is: a row the old key cannot open
stops the whole change (``master_key_mismatch``).

Two other things are derived from the master key and simply change with it: console
session cookies (signed-in operators sign in again) and the salt of masked-value digests
in audit events (digests written before and after the change are not comparable).
"""

from __future__ import annotations

import secrets as _random
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select, update

from tether.errors import ConfigError
from tether.store import credentials_tables as ct
from tether.store import tables as t
from tether.store.db import Database

_SECRET_AAD = b"tether-secret:"  # the AAD prefix of tether.credentials.secrets


@dataclass(frozen=True, slots=True)
class Rewrapped:
    signing_keys: int
    secrets: int


def _reseal(old: AESGCM, new: AESGCM, blob: bytes, aad: bytes, what: str) -> bytes:
    try:
        plain = old.decrypt(blob[:12], blob[12:], aad)
    except InvalidTag:
        raise ConfigError(
            f"{what} cannot be decrypted with the current master key; nothing was changed",
            code="master_key_mismatch",
        ) from None
    nonce = _random.token_bytes(12)
    return nonce + new.encrypt(nonce, plain, aad)


def rewrap(db: Database, old_key: bytes, new_key: bytes) -> Rewrapped:
    """Re-encrypt every signing key and stored secret from ``old_key`` to ``new_key``."""
    if len(new_key) != 32:
        raise ConfigError("the new master key must be 32 bytes", code="config_invalid")
    if new_key == old_key:
        raise ConfigError("the new master key is the current one", code="config_invalid")
    old, new = AESGCM(old_key), AESGCM(new_key)
    sk, sec = t.signing_keys.c, ct.secrets.c
    with db.guard(), db.begin() as conn:
        keys = conn.execute(select(sk.kid, sk.private_enc).with_for_update()).all()
        for kid, blob in keys:
            sealed = _reseal(old, new, bytes(blob), str(kid).encode(), f"signing key `{kid}`")
            conn.execute(update(t.signing_keys).where(sk.kid == kid).values(private_enc=sealed))
        stored = conn.execute(select(sec.name, sec.value_enc).with_for_update()).all()
        for name, blob in stored:
            aad = _SECRET_AAD + str(name).encode()
            sealed = _reseal(old, new, bytes(blob), aad, f"secret `{name}`")
            conn.execute(update(ct.secrets).where(sec.name == name).values(value_enc=sealed))
    return Rewrapped(len(keys), len(stored))
