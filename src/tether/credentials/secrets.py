"""Upstream secrets for the ``inject`` connector, encrypted at rest with the master key.

Each value is sealed with AES-256-GCM under the broker's master key (the one that seals
its signing keys), with the secret's name as associated data so a sealed value copied
onto another name does not open. Values leave this module only towards enforcement
points (``IssuedCredential.for_enforcer``); the audit filter from :meth:`mask` replaces
any that shows up in an audit payload.
"""

from __future__ import annotations

import re
import secrets as _random
import threading
import time
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import delete, insert, select, update

from tether.errors import InvalidRequest, NotFound, Unavailable
from tether.store import credentials_tables as ct
from tether.store.db import Database

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HEADER_RE = re.compile(r"^[A-Za-z0-9-]{1,128}$")
MASK = "[secret]"
_MIN_MASKED_LEN = 6  # shorter values would mask ordinary words in every event


def _aad(name: str) -> bytes:
    return b"tether-secret:" + name.encode()


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidRequest(
            f"invalid secret name `{str(name)[:64]}`; use letters, digits, `.`, `_`, `-`",
            code="invalid_secret_name",
            field="name",
        )
    return name


class SecretStore:
    def __init__(self, db: Database, master_key: bytes) -> None:
        self._db = db
        self._aead = AESGCM(master_key)
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[str, str]] = {}
        self._loaded = False

    def set(self, name: str, value: str, header: str = "Authorization") -> None:
        check_name(name)
        if not isinstance(value, str) or not value or len(value) > 8192 or "\n" in value or "\r" in value:
            # A newline in a header value is header injection at the enforcement point.
            raise InvalidRequest(
                "the secret value must be 1-8192 characters on one line",
                code="invalid_secret_value",
                field="value",
            )
        if not isinstance(header, str) or not _HEADER_RE.match(header):
            raise InvalidRequest(
                f"invalid header name `{str(header)[:64]}`", code="invalid_field", field="header"
            )
        nonce = _random.token_bytes(12)
        blob = nonce + self._aead.encrypt(nonce, value.encode(), _aad(name))
        now = time.time()
        with self._db.begin() as conn:
            done = conn.execute(
                update(ct.secrets)
                .where(ct.secrets.c.name == name)
                .values(header=header, value_enc=blob, updated_at=now)
            ).rowcount
            if not done:
                conn.execute(
                    insert(ct.secrets).values(
                        name=name, header=header, value_enc=blob, created_at=now, updated_at=now
                    )
                )
        with self._lock:
            self._cache[name] = (header, value)

    def get(self, name: str) -> tuple[str, str]:
        """(header, value) of a secret; ``NotFound(secret_not_configured)`` when absent."""
        with self._lock:
            hit = self._cache.get(name)
        if hit is not None:
            return hit
        with self._db.read() as conn:
            row = conn.execute(select(ct.secrets).where(ct.secrets.c.name == name)).first()
        if row is None:
            raise NotFound(
                f"no secret `{name}`; set it with `tether secrets set {name}`", code="secret_not_configured"
            )
        header, value = row._mapping["header"], self._open(name, row._mapping["value_enc"])
        with self._lock:
            self._cache[name] = (header, value)
        return header, value

    def _open(self, name: str, blob: bytes) -> str:
        try:
            return self._aead.decrypt(blob[:12], blob[12:], _aad(name)).decode()
        except InvalidTag:
            raise Unavailable(
                f"secret `{name}` cannot be decrypted: wrong master key for this store",
                code="secret_undecryptable",
            ) from None

    def names(self) -> list[dict[str, Any]]:
        with self._db.read() as conn:
            rows = conn.execute(
                select(
                    ct.secrets.c.name, ct.secrets.c.header, ct.secrets.c.created_at, ct.secrets.c.updated_at
                ).order_by(ct.secrets.c.name)
            ).all()
        return [dict(r._mapping) for r in rows]

    def delete(self, name: str) -> bool:
        with self._db.begin() as conn:
            n = conn.execute(delete(ct.secrets).where(ct.secrets.c.name == check_name(name))).rowcount
        with self._lock:
            self._cache.pop(name, None)
        return bool(n)

    def _values(self) -> list[str]:
        if not self._loaded:
            for item in self.names():
                try:
                    self.get(item["name"])
                except Unavailable:
                    continue
            self._loaded = True
        with self._lock:
            vals = {v for _, v in self._cache.values()}
        # Also the bare token of "Bearer sk-…", in case only that part leaks.
        vals |= {v.split(" ", 1)[1] for v in vals if " " in v}
        return sorted((v for v in vals if len(v) >= _MIN_MASKED_LEN), key=len, reverse=True)

    def audit_filter(self) -> SecretScrubber:
        """The audit payload filter that masks these secrets (:meth:`mask`)."""
        return SecretScrubber(self)

    def mask(self, _type: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Audit payload filter: replace any stored secret value inside any string."""
        values = self._values()
        if not values:
            return payload

        def scrub(x: Any) -> Any:
            if isinstance(x, str):
                for v in values:
                    if v in x:
                        x = x.replace(v, MASK)
                return x
            if isinstance(x, dict):
                return {k: scrub(v) for k, v in x.items()}
            if isinstance(x, list):
                return [scrub(v) for v in x]
            return x

        out: dict[str, Any] = scrub(payload)
        return out


class SecretScrubber:
    """:meth:`SecretStore.mask` as an audit filter that can tell when it has nothing to do."""

    def __init__(self, store: SecretStore) -> None:
        self._store = store

    def __call__(self, type_: str, payload: dict[str, Any]) -> dict[str, Any]:
        return self._store.mask(type_, payload)

    def untouched(self, text: str) -> bool:
        # ``text`` has no escapes, so a stored value inside any string is inside ``text``.
        return "\\" not in text and not any(v in text for v in self._store._values())
