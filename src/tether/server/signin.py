"""Human sign-in for browser pages: OIDC authorization code + PKCE, sealed session cookies,
CSRF tokens, and one-time login links for the operator at the machine.

Reusable by any page that needs a human (the console, a consent screen): nothing here
knows a route. Pieces:

* :class:`Sealer` — HMAC-SHA256 sealed, expiring JSON values (cookies, login links).
  The key is derived from the state directory's master key, so every replica sharing
  that key accepts the same sessions and nothing is stored per session.
* :class:`OidcSignIn` — discovery, the authorize URL (``state``, ``nonce``, S256 PKCE
  challenge; RFC 7636), the code exchange, and the ID token check through the strict
  :func:`~tether.identity.jwt.verify_jwt` (exact ``iss``, ``aud`` = client id, nonce).
* :func:`role_for` — the highest role whose configured claim values the token carries.
* :class:`LoginLinks` — single-use links valid for 60 s, minted over the admin socket
  (peer-credential checked) for the operator's uid.

Error codes: ``signin_failed`` (401: the issuer's answer did not check out),
``signin_no_role`` (403: signed in, but no role is mapped), ``issuer_unavailable`` (503),
``login_link_invalid`` (401: expired, used, or forged link).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tether.config_console import ROLES, ConsoleOidc
from tether.errors import Forbidden, Unauthenticated, Unavailable
from tether.identity.jwt import verify_jwt
from tether.identity.oidc import MAX_DISCOVERY_BYTES, IssuerKeys

LOGIN_LINK_TTL = 60.0
LOGIN_STATE_TTL = 600.0  # how long a browser may sit on the issuer's login page


def derive_key(master_key: bytes, purpose: str) -> bytes:
    """A key for one purpose, so a console cookie can never be replayed as anything else."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode()).derive(master_key)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sealer:
    """``seal(value, ttl)`` → opaque text; ``open(text)`` → the value, or None if forged/expired."""

    MAX_BYTES = 4096

    def __init__(self, key: bytes, *, clock: Any = time.time) -> None:
        self._key, self._clock = key, clock

    def seal(self, value: Mapping[str, Any], ttl: float, kind: str) -> str:
        body = _b64(
            json.dumps({**value, "_k": kind, "_exp": self._clock() + ttl}, separators=(",", ":")).encode()
        )
        mac = hmac.new(self._key, body.encode(), hashlib.sha256).digest()
        return f"{body}.{_b64(mac)}"

    def open(self, text: str | None, kind: str) -> dict[str, Any] | None:
        if not text or len(text) > self.MAX_BYTES or text.count(".") != 1:
            return None
        body, mac = text.split(".")
        try:
            want = hmac.new(self._key, body.encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(want, _unb64(mac)):
                return None
            value = json.loads(_unb64(body))
        except (ValueError, TypeError):
            return None
        if not isinstance(value, dict) or value.get("_k") != kind:
            return None  # a login-state cookie is not a session, and so on
        exp = value.get("_exp")
        if not isinstance(exp, int | float) or exp <= self._clock():
            return None
        return value

    def csrf(self, session_id: str) -> str:
        """The CSRF token of one session: bound to it, useless with any other."""
        return _b64(hmac.new(self._key, b"csrf:" + session_id.encode(), hashlib.sha256).digest())

    def check_csrf(self, session_id: str, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf(session_id), token or "")


@dataclass(frozen=True, slots=True)
class Human:
    """Who is at the keyboard: ``subject`` is stable (``oidc:<sub>`` or ``uid:<n>``)."""

    subject: str
    name: str
    role: str
    via: str  # "oidc" | "login-link"
    issuer: str = ""

    @property
    def audit_name(self) -> str:
        """What audit events and approval records name: the subject, with the name beside it."""
        return f"{self.subject} ({self.name})" if self.name and self.name != self.subject else self.subject

    def may(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)

    def to_dict(self) -> dict[str, str]:
        return {
            "sub": self.subject,
            "name": self.name,
            "role": self.role,
            "via": self.via,
            "iss": self.issuer,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Human | None:
        try:
            h = cls(str(d["sub"]), str(d["name"]), str(d["role"]), str(d["via"]), str(d.get("iss", "")))
        except KeyError:
            return None
        return h if h.role in ROLES else None


def role_for(claims: Mapping[str, Any], claim: str, roles: Mapping[str, tuple[str, ...]]) -> str | None:
    """The highest role one of whose values the claim holds (a string or a list of strings)."""
    raw = claims.get(claim)
    held = (
        {raw}
        if isinstance(raw, str)
        else {v for v in raw if isinstance(v, str)}
        if isinstance(raw, list)
        else set()
    )
    best: str | None = None
    for role in ROLES:
        if held & set(roles.get(role, ())):
            best = role
    return best


def pkce_pair() -> tuple[str, str]:
    verifier = _b64(secrets.token_bytes(32))
    return verifier, _b64(hashlib.sha256(verifier.encode()).digest())


class OidcSignIn:
    """One relying party of one issuer. Discovery is fetched on first use and cached."""

    def __init__(
        self,
        cfg: ConsoleOidc,
        roles: Mapping[str, tuple[str, ...]],
        redirect_uri: str,
        *,
        client: httpx.Client | None = None,
        leeway: int = 30,
    ) -> None:
        self.cfg, self.roles, self.redirect_uri, self.leeway = cfg, roles, redirect_uri, leeway
        self._client = client or httpx.Client(timeout=5.0, follow_redirects=False)
        self._lock = threading.Lock()
        self._doc: dict[str, Any] | None = None
        self._keys: IssuerKeys | None = None

    def _discovery(self) -> dict[str, Any]:
        with self._lock:
            if self._doc is not None:
                return self._doc
            url = self.cfg.issuer.rstrip("/") + "/.well-known/openid-configuration"
            try:
                resp = self._client.get(url)
                if resp.status_code != 200 or len(resp.content) > MAX_DISCOVERY_BYTES:
                    raise ValueError(f"status {resp.status_code}")
                doc = resp.json()
            except (httpx.HTTPError, ValueError) as exc:
                raise Unavailable(
                    f"OIDC discovery for `{self.cfg.issuer}` failed", code="issuer_unavailable"
                ) from exc
            if not isinstance(doc, dict) or doc.get("issuer") != self.cfg.issuer:
                raise Unavailable("the discovery document names another issuer", code="issuer_unavailable")
            for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                value = doc.get(name)
                parts = urlsplit(value) if isinstance(value, str) else None
                loopback = parts is not None and parts.hostname in ("127.0.0.1", "::1", "localhost")
                if parts is None or not (parts.scheme == "https" or (parts.scheme == "http" and loopback)):
                    raise Unavailable(f"discovery has no https `{name}`", code="issuer_unavailable")
            self._doc = doc
            self._keys = IssuerKeys(self.cfg.issuer, doc["jwks_uri"], self._client)
            return doc

    def start(self) -> tuple[str, dict[str, str]]:
        """The issuer URL to send the browser to, and what to remember until it comes back."""
        doc = self._discovery()
        verifier, challenge = pkce_pair()
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        query = {
            "response_type": "code",
            "client_id": self.cfg.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": " ".join(self.cfg.scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        sep = "&" if "?" in doc["authorization_endpoint"] else "?"
        return doc["authorization_endpoint"] + sep + urlencode(query), {
            "state": state,
            "nonce": nonce,
            "verifier": verifier,
        }

    def finish(self, code: str, state: str, remembered: Mapping[str, Any]) -> Human:
        """Check the callback, exchange the code, verify the ID token, map the role."""
        if not code or not state or not hmac.compare_digest(str(remembered.get("state", "")), state):
            raise Unauthenticated(
                "the sign-in answer does not match this browser's request", code="signin_failed"
            )
        doc = self._discovery()
        form = {
            "grant_type": "authorization_code",
            "code": code[:2048],
            "redirect_uri": self.redirect_uri,
            "client_id": self.cfg.client_id,
            "code_verifier": str(remembered.get("verifier", "")),
        }
        extra: dict[str, Any] = {}
        if self.cfg.client_secret:  # a confidential client also authenticates (RFC 6749 2.3.1)
            extra["auth"] = (self.cfg.client_id, self.cfg.client_secret)
        try:
            resp = self._client.post(doc["token_endpoint"], data=form, **extra)
            body = resp.json() if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError) as exc:
            raise Unavailable("the OIDC token endpoint failed", code="issuer_unavailable") from exc
        token = body.get("id_token") if isinstance(body, dict) else None
        if not isinstance(token, str):
            raise Unauthenticated("the issuer returned no ID token", code="signin_failed")
        assert self._keys is not None
        claims = verify_jwt(
            token,
            key_for=self._keys.key_for,
            algorithms=self.cfg.algorithms,
            audience=self.cfg.client_id,
            issuer=self.cfg.issuer,
            typ=("JWT",),
            require_typ=False,
            leeway=self.leeway,
            required=("exp", "iat", "sub", "nonce"),
        )
        if not hmac.compare_digest(str(claims.get("nonce", "")), str(remembered.get("nonce", ""))):
            raise Unauthenticated("the ID token's nonce does not match", code="signin_failed")
        sub = str(claims["sub"])[:200]
        name = claims.get(self.cfg.name_claim)
        role = role_for(claims, self.cfg.role_claim, self.roles)
        human = Human(
            f"oidc:{sub}",
            str(name)[:200] if isinstance(name, str) else sub,
            role or "viewer",
            "oidc",
            self.cfg.issuer,
        )
        if role is None:
            raise Forbidden(
                f"`{human.audit_name}` has no console role; ask an admin to map one in `[console.roles]`",
                code="signin_no_role",
                human=human.audit_name,
            )
        return human


class LoginLinks:
    """Single-use, 60-second login tokens for the operator at the machine (``tether console``)."""

    def __init__(self, sealer: Sealer, *, ttl: float = LOGIN_LINK_TTL) -> None:
        self._sealer, self._ttl = sealer, ttl
        self._used: dict[str, float] = {}
        self._lock = threading.Lock()

    def issue(self, uid: int, user: str) -> str:
        return self._sealer.seal(
            {"uid": uid, "user": user, "n": secrets.token_urlsafe(16)}, self._ttl, "login-link"
        )

    def redeem(self, token: str) -> Human:
        value = self._sealer.open(token, "login-link")
        if value is None:
            raise Unauthenticated(
                "this login link is invalid or expired; run `tether console` again", code="login_link_invalid"
            )
        now = time.time()
        with self._lock:
            for n, exp in list(self._used.items()):
                if exp <= now:
                    del self._used[n]
            nonce = str(value.get("n"))
            if nonce in self._used:
                raise Unauthenticated(
                    "this login link was already used; run `tether console` again", code="login_link_invalid"
                )
            self._used[nonce] = float(value["_exp"])
        uid = int(value["uid"])
        # Only the uid that may operate the broker over the admin socket can mint a link,
        # so a link holder is an admin, named by that uid.
        return Human(f"uid:{uid}", str(value.get("user") or ""), "admin", "login-link")
