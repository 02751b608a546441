"""Signed checkpoints: "chain C had head hash H at seq S at time T", signed ES256.

The hash chain alone proves that nothing *inside* the log changed; it cannot show that
the end was cut off or that an older copy of the database was put back. A checkpoint
can, when it is kept somewhere the database's attacker cannot reach: each one is stored
in ``audit_checkpoints`` and, when configured, appended to ``audit.checkpoint_file``
(ship that file to WORM storage) and POSTed to ``audit.checkpoint_url``.

A checkpoint is a compact JWS (``typ: tether-audit-checkpoint+jwt``) signed with the
broker's current key. Verification needs only the public key, found by ``kid`` in the
store's ``signing_keys`` table (or a JWKS file the investigator trusts), so it works
offline with the broker stopped and without the master key.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, insert, select

from tether.audit.chain import AuditChain
from tether.config import AuditSettings
from tether.errors import InvalidRequest, TetherError, Unauthenticated
from tether.identity.jwt import ANY, load_jwk, sign_jwt, verify_jwt
from tether.identity.keys import KeyRing
from tether.store import tables as t
from tether.store.audit_tables import audit_checkpoints
from tether.store.db import Database

log = logging.getLogger("tether.audit")

CHECKPOINT_TYP = "tether-audit-checkpoint+jwt"
_MAX_LINE = 16 * 1024


@dataclass(frozen=True, slots=True)
class Checkpoint:
    chain: str
    seq: int
    hash: str
    ts: float
    kid: str
    jws: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> Checkpoint:
        if not isinstance(d, Mapping):
            raise InvalidRequest("a checkpoint must be a JSON object", code="checkpoint_malformed")
        try:
            cp = cls(
                chain=d["chain"], seq=d["seq"], hash=d["hash"], ts=float(d["ts"]), kid=d["kid"], jws=d["jws"]
            )
        except (KeyError, TypeError, ValueError):
            raise InvalidRequest(
                "a checkpoint needs `chain`, `seq`, `hash`, `ts`, `kid` and `jws`",
                code="checkpoint_malformed",
            ) from None
        if not (
            isinstance(cp.chain, str)
            and isinstance(cp.seq, int)
            and not isinstance(cp.seq, bool)
            and isinstance(cp.hash, str)
            and isinstance(cp.kid, str)
            and isinstance(cp.jws, str)
        ):
            raise InvalidRequest("a checkpoint field has the wrong type", code="checkpoint_malformed")
        return cp


def sign_checkpoint(keys: KeyRing, chain: str, seq: int, head_hash: str, ts: float) -> Checkpoint:
    key = keys.signing_key()
    # `exp` only satisfies the strict JWT verifier, which requires one; checkpoints are
    # verified "as of" their own time (see verify_checkpoint), never against the clock.
    claims = {"chain": chain, "seq": seq, "hash": head_hash, "iat": ts, "exp": ts + 60}
    jws = sign_jwt(claims, key.private_key, kid=key.kid, typ=CHECKPOINT_TYP)
    return Checkpoint(chain, seq, head_hash, ts, key.kid, jws)


def verify_checkpoint(cp: Checkpoint, jwks: Mapping[str, Mapping[str, Any]]) -> str | None:
    """``None`` when ``cp`` is authentic and its fields match its signature; else a code:
    ``unknown_key`` (no public key for its kid) or ``bad_signature``."""
    jwk = jwks.get(cp.kid)
    if jwk is None:
        return "unknown_key"
    try:
        key = load_jwk(jwk)
        claims = verify_jwt(
            cp.jws,
            key_for=lambda _h, _c: key,
            algorithms=("ES256",),
            audience=ANY,
            issuer=ANY,
            typ=(CHECKPOINT_TYP,),
            leeway=0,
            now=cp.ts,
            required=("chain", "seq", "hash", "iat"),
        )
    except (Unauthenticated, InvalidRequest):
        return "bad_signature"
    # The unsigned columns must say what the signature says; otherwise someone moved a
    # valid signature onto another head.
    if (claims.get("chain"), claims.get("seq"), claims.get("hash"), claims.get("iat")) != (
        cp.chain,
        cp.seq,
        cp.hash,
        cp.ts,
    ) or json.loads(_header(cp.jws)).get("kid") != cp.kid:
        return "bad_signature"
    return None


def _header(jws: str) -> str:
    import base64

    seg = jws.split(".", 1)[0]
    return base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)).decode()


def store_jwks(conn: Connection) -> dict[str, dict[str, Any]]:
    """Public keys by kid, expired ones included: old checkpoints must still verify."""
    return {
        r[0]: json.loads(r[1])
        for r in conn.execute(select(t.signing_keys.c.kid, t.signing_keys.c.public_jwk))
    }


def load_jwks_file(path: Path) -> dict[str, dict[str, Any]]:
    try:
        doc = json.loads(path.read_text())
        return {k["kid"]: k for k in doc["keys"] if isinstance(k, dict) and isinstance(k.get("kid"), str)}
    except (OSError, ValueError, KeyError, TypeError):
        raise InvalidRequest(f"`{path}` is not a readable JWKS file", code="jwks_invalid") from None


def stored_checkpoints(conn: Connection, chain: str | None = None) -> list[Checkpoint]:
    q = select(audit_checkpoints).order_by(audit_checkpoints.c.chain, audit_checkpoints.c.seq)
    if chain is not None:
        q = q.where(audit_checkpoints.c.chain == chain)
    return [Checkpoint(**dict(r._mapping)) for r in conn.execute(q)]


def read_checkpoint_file(path: Path) -> list[Checkpoint]:
    """Checkpoints kept outside the database (JSON Lines), as written by the broker."""
    out: list[Checkpoint] = []
    try:
        with path.open() as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if len(line) > _MAX_LINE:
                    raise InvalidRequest(
                        f"`{path}` line {n} is too long", code="checkpoint_malformed", line=n
                    )
                try:
                    out.append(Checkpoint.from_dict(json.loads(line)))
                except (ValueError, InvalidRequest):
                    raise InvalidRequest(
                        f"`{path}` line {n} is not a checkpoint", code="checkpoint_malformed", line=n
                    ) from None
    except OSError as exc:
        raise InvalidRequest(
            f"cannot read checkpoint file `{path}`: {exc.strerror}", code="checkpoint_file_unreadable"
        ) from None
    return out


def append_checkpoint_file(path: Path, cp: Checkpoint) -> None:
    # O_APPEND + fsync: a crash leaves at worst a torn last line, never a rewritten file.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(cp.to_dict(), separators=(",", ":")) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def post_checkpoint(url: str, cp: Checkpoint, timeout: float = 5.0) -> None:
    if not url.startswith(("https://", "http://")):  # never file:// or custom schemes
        raise OSError("checkpoint_url must be an http(s) URL")
    req = urllib.request.Request(  # noqa: S310 (scheme checked above)
        url,
        data=json.dumps(cp.to_dict()).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (scheme checked in config)
        if resp.status >= 300:
            raise OSError(f"checkpoint endpoint answered {resp.status}")


def write_checkpoint(
    db: Database,
    keys: KeyRing,
    cfg: AuditSettings,
    state_dir: Path,
    chain: str,
    seq: int,
    head_hash: str,
    now: float,
) -> Checkpoint:
    """Sign, store and ship one checkpoint. Storing must succeed; shipping is best effort
    (logged with a code): an unreachable archive must not stop the broker."""
    cp = sign_checkpoint(keys, chain, seq, head_hash, now)
    with db.begin() as conn:
        exists = conn.execute(
            select(audit_checkpoints.c.seq).where(
                audit_checkpoints.c.chain == chain, audit_checkpoints.c.seq == seq
            )
        ).first()
        if exists is None:
            conn.execute(insert(audit_checkpoints).values(**cp.to_dict()))
    if cfg.checkpoint_file:
        path = Path(cfg.checkpoint_file)
        try:
            append_checkpoint_file(path if path.is_absolute() else state_dir / path, cp)
        except OSError as exc:
            log.error(
                "audit checkpoint %s@%d not written to file (checkpoint_file_failed): %s", chain, seq, exc
            )
    if cfg.checkpoint_url:
        try:
            post_checkpoint(cfg.checkpoint_url, cp)
        except OSError as exc:
            log.error("audit checkpoint %s@%d not posted (checkpoint_post_failed): %s", chain, seq, exc)
    return cp


class CheckpointWriter:
    """Checkpoints this process's chain every N events or T seconds, and on shutdown."""

    def __init__(
        self,
        db: Database,
        chain: AuditChain,
        keys: KeyRing,
        cfg: AuditSettings,
        state_dir: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db, self.chain, self.keys, self.cfg = db, chain, keys, cfg
        self.state_dir, self.clock = state_dir, clock
        self._lock = threading.Lock()
        with db.read() as conn:
            row = conn.execute(
                select(func.max(audit_checkpoints.c.seq), func.max(audit_checkpoints.c.ts)).where(
                    audit_checkpoints.c.chain == chain.chain_id
                )
            ).first()
        self.last_seq = int(row[0]) if row and row[0] is not None else 0
        self.last_ts = float(row[1]) if row and row[1] is not None else clock()

    def tick(self, *, force: bool = False) -> Checkpoint | None:
        """Write a checkpoint if one is due (or ``force``) and the head moved since the last."""
        with self._lock:
            seq, head = self.chain.snapshot()
            now = self.clock()
            if seq == 0 or seq <= self.last_seq:
                return None
            due = (
                seq - self.last_seq >= self.cfg.checkpoint_every_events
                or now - self.last_ts >= self.cfg.checkpoint_interval_seconds
            )
            if not (due or force):
                return None
            try:
                cp = write_checkpoint(
                    self.db, self.keys, self.cfg, self.state_dir, self.chain.chain_id, seq, head, now
                )
            except TetherError as exc:
                log.error("audit checkpoint failed (%s): %s", exc.code, exc.message)
                return None
            self.last_seq, self.last_ts = seq, now
            return cp
