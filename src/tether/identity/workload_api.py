"""The local Workload API: JWT-SVIDs for attested processes, over a Unix socket.

Any local process may connect (the socket is 0666): access is decided by attestation,
not by file mode. The kernel identifies the caller (:mod:`tether.identity.attestor`),
registration entries (:mod:`tether.identity.registrations`) say which SPIFFE IDs it may
have, and the broker signs short-lived ES256 JWT-SVIDs with its current key. Every
issuance is a ``workload.attested`` audit event; every refusal an audited deny.

Protocol: one JSON object per line each way (like the admin socket).

    {"op": "fetch_jwt_svid", "audience": ["spiffe://td/tether"], "spiffe_id": null}
      -> {"ok": true, "svids": [{"spiffe_id", "svid", "expires_at"}]}
    {"op": "fetch_jwt_bundles"}  -> {"ok": true, "bundles": {"<trust domain>": JWKS}}
    errors -> {"ok": false, "error": {"code", "message", ...}}

Several matching entries: without ``spiffe_id`` the caller gets one SVID per identity
(as the SPIFFE Workload API does); :func:`tether.sdk.workload.fetch_svid` then asks it to choose.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tether.audit import event as ev
from tether.audit.chain import AuditChain
from tether.errors import Forbidden, InvalidRequest, TetherError, Unauthenticated, Unavailable
from tether.identity import attestor, registrations
from tether.identity.jwt import sign_jwt
from tether.identity.keys import KeyRing
from tether.linesocket import refuse_if_served
from tether.store.db import Database

log = logging.getLogger("tether.workload_api")
MAX_REQUEST = 16 * 1024
MAX_AUDIENCES = 8
READ_TIMEOUT = 5.0


class SvidIssuer:
    """Signs JWT-SVIDs (JWT-SVID spec: ``sub``, ``aud``, ``exp``; ES256, never EdDSA/HS)."""

    def __init__(
        self, keys: KeyRing, *, issuer: str, ttl_seconds: int, clock: Callable[[], float] = time.time
    ) -> None:
        self._keys, self.issuer, self.ttl, self._clock = keys, issuer, ttl_seconds, clock

    def issue(self, spiffe_id: str, audience: Sequence[str]) -> tuple[str, int]:
        key = self._keys.signing_key()
        now = int(self._clock())
        exp = now + self.ttl
        claims = {"sub": spiffe_id, "aud": list(audience), "iat": now, "exp": exp, "iss": self.issuer}
        return sign_jwt(claims, key.private_key, kid=key.kid, typ="JWT"), exp


def parse_audience(value: Any) -> list[str]:
    auds = [value] if isinstance(value, str) else value
    if (
        not isinstance(auds, list)
        or not 1 <= len(auds) <= MAX_AUDIENCES
        or not all(isinstance(a, str) and 0 < len(a) <= 512 and a.isprintable() for a in auds)
    ):
        raise InvalidRequest(
            f"`audience` must be 1-{MAX_AUDIENCES} non-empty strings",
            code="invalid_audience",
            field="audience",
        )
    return list(dict.fromkeys(auds))


class WorkloadApi:
    """Request handling, independent of the socket (tests call :meth:`handle` directly)."""

    def __init__(
        self, db: Database, audit: AuditChain, issuer: SvidIssuer, bundles: Callable[[], Mapping[str, Any]]
    ) -> None:
        self.db, self.audit, self.issuer, self._bundles = db, audit, issuer, bundles

    def _deny(self, exc: TetherError, facts: attestor.PeerFacts | None, request: Mapping[str, Any]) -> None:
        wanted = request.get("spiffe_id")
        with self.audit.unit() as u:
            u.emit(
                ev.DECISION,
                {
                    "action": "svid:fetch",
                    "outcome": "deny",
                    "code": exc.code,
                    "peer": facts.to_dict() if facts else None,
                    "requested_spiffe_id": wanted[:2048] if isinstance(wanted, str) else None,
                },
            )

    def fetch_jwt_svid(self, facts: attestor.PeerFacts, request: Mapping[str, Any]) -> dict[str, Any]:
        audience = parse_audience(request.get("audience"))
        wanted = request.get("spiffe_id")
        if wanted is not None and not isinstance(wanted, str):
            raise InvalidRequest("`spiffe_id` must be a string", code="invalid_field", field="spiffe_id")
        with self.db.read() as conn:
            entries = registrations.list_entries(conn)
        matching = [
            e
            for e in entries
            if (wanted is None or e.spiffe_id == wanted)
            and all(
                registrations.selector_matches(s, facts.uid, facts.gid, facts.path, facts.sha256)
                for s in e.selectors
            )
        ]
        if not matching:
            # One answer for "no entry" and "an entry you do not match": no probing.
            raise Forbidden(
                f"no registration entry matches this process (uid {facts.uid}, gid {facts.gid}, "
                f"executable `{facts.path or 'unreadable'}`)"
                + (f" for `{wanted[:256]}`" if wanted else "")
                + "; an operator can add one with `tether workload register`",
                code="no_matching_entry",
                uid=facts.uid,
                gid=facts.gid,
                path=facts.path,
                sha256=facts.sha256,
            )
        out: list[dict[str, Any]] = []
        by_id: dict[str, registrations.Entry] = {}
        for e in matching:
            by_id.setdefault(e.spiffe_id, e)
        with self.audit.unit() as u:
            for spiffe_id, entry in by_id.items():
                token, exp = self.issuer.issue(spiffe_id, audience)
                u.emit(
                    ev.WORKLOAD_ATTESTED,
                    {
                        "attestation": "unix",
                        "entry_id": entry.id,
                        "audience": audience,
                        "expires_at": exp,
                        "peer": facts.to_dict(),
                    },
                    agent=spiffe_id,
                )
                out.append({"spiffe_id": spiffe_id, "svid": token, "expires_at": exp})
        return {"svids": out}

    def handle(self, facts: attestor.PeerFacts, request: Mapping[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        try:
            if op == "fetch_jwt_svid":
                return {"ok": True, **self.fetch_jwt_svid(facts, request)}
            if op == "fetch_jwt_bundles":
                return {"ok": True, "bundles": dict(self._bundles())}
            raise InvalidRequest(
                f"unknown operation `{str(op)[:64]}`; use fetch_jwt_svid or fetch_jwt_bundles",
                code="unknown_operation",
            )
        except (Forbidden, Unauthenticated) as exc:
            self._deny(exc, facts, request)
            raise


def _bind_path(sock: socket.socket, path: Path) -> None:
    # sun_path holds ~107 bytes; deep state directories (pytest, home dirs) exceed it. Binding
    # through /proc/self/fd/<dir fd> keeps the address short and lands in the same directory.
    if len(os.fsencode(path)) < 100:
        sock.bind(str(path))
        return
    dirfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        sock.bind(f"/proc/self/fd/{dirfd}/{path.name}")
    finally:
        os.close(dirfd)


class WorkloadApiServer:
    """A threaded Unix-socket server; a bounded pool so a flood of callers cannot pile up threads."""

    def __init__(self, api: WorkloadApi, path: Path, *, workers: int = 8) -> None:
        self.api, self.path = api, path
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tether-wl")
        self._thread: threading.Thread | None = None
        self._inode = -1

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_symlink() or self.path.exists():
            refuse_if_served(self.path)  # never take a live broker's socket away from it
            if not self.path.is_socket():
                raise Unavailable(
                    f"`{self.path}` exists and is not a socket; remove it", code="workload_socket_unavailable"
                )
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        _bind_path(sock, self.path)
        os.chmod(self.path, 0o666)  # noqa: S103 - any local process may ask; attestation decides
        self._inode = self.path.stat().st_ino
        sock.listen(64)
        sock.settimeout(0.5)  # lets the accept loop notice close()
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="tether-workload-api", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                log.exception("workload API accept failed")
                continue
            self._pool.submit(self._handle, conn)

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(READ_TIMEOUT)
            facts: attestor.PeerFacts | None = None
            request: dict[str, Any] = {}
            try:
                facts = attestor.attest(conn)  # at accept time, before the caller can exec
                request = _parse_request(_read_line(conn))
                if not attestor.same_executable(facts):
                    raise Unauthenticated(
                        "the calling process changed its executable after connecting", code="peer_changed"
                    )
                reply = self.api.handle(facts, request)
            except TetherError as exc:
                if facts is None or exc.code == "peer_changed":
                    self._try_audit(exc, facts, request)
                reply = {"ok": False, "error": exc.to_dict()}
            except Exception:
                log.exception("workload API request failed")
                reply = {
                    "ok": False,
                    "error": {"code": "internal_error", "message": "internal error; no SVID was issued"},
                }
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(reply).encode() + b"\n")

    def _try_audit(self, exc: TetherError, facts: attestor.PeerFacts | None, request: dict[str, Any]) -> None:
        try:
            self.api._deny(exc, facts, request)
        except TetherError:
            log.exception("could not audit a refused workload API call")

    def close(self) -> None:
        self._stop.set()
        if self._sock is not None:
            # shutdown() wakes the accept() blocked in the serving thread at once (close()
            # alone would leave it waiting for its timeout).
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._pool.shutdown(wait=True, cancel_futures=True)
        # Only our own socket file: another broker on this state dir may have replaced it.
        with contextlib.suppress(OSError):
            if self.path.is_socket() and self.path.stat().st_ino == self._inode:
                self.path.unlink()


def _read_line(conn: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\n"):
        try:
            chunk = conn.recv(4096)
        except TimeoutError:
            raise InvalidRequest("the request did not arrive in time", code="request_timeout") from None
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_REQUEST:
            raise InvalidRequest(f"the request exceeds {MAX_REQUEST} bytes", code="payload_too_large")
    return buf


def _no_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError("duplicate key")
        out[k] = v
    return out


def _parse_request(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw, object_pairs_hook=_no_dupes)
    except (ValueError, RecursionError):
        doc = None
    if not isinstance(doc, dict):
        raise InvalidRequest("send one JSON object per line", code="malformed_json")
    return doc


# The client of this API (call, fetch_svid, fetch_svids, fetch_bundles) is
# `tether.sdk.workload`: agents use it without importing the broker.
