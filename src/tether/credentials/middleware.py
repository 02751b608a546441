"""ASGI middleware for a Python resource server that accepts Tether ``jwt`` credentials.

    from tether.credentials.middleware import (
        HttpFeedSource, JwksKeys, RevocationFollower, TetherAuthMiddleware)

    follower = RevocationFollower(HttpFeedSource("https://tether.internal", svid_supplier))
    follower.start()
    app = TetherAuthMiddleware(app, audience="tickets", issuer=ISSUER,
                               keys=JwksKeys.from_url("https://tether.internal/.well-known/jwks.json"),
                               follower=follower)

Each request: the bearer token is verified offline (ES256 only, ``typ: at+jwt``, exact
``iss``, ``aud`` = this service, ``exp``), then checked against the revocation feed —
its ``jti`` (the lease) and its ``txn`` (the task) must not be revoked. The follower
long-polls the feed; if it has not synced within ``max_staleness`` seconds every
request is refused with 503 ``revocation_feed_stale``: a resource server that cannot
learn about revocations fails closed instead of trusting tokens it might have to refuse.
The verified claims are in ``scope["tether"]`` for the application.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import httpx

from tether.credentials.connectors.jwt import ACCESS_TOKEN_TYP
from tether.credentials.revocation import Feed, RevocationEvent
from tether.errors import TetherError, Unauthenticated, Unavailable
from tether.identity.jwt import key_by_kid, load_jwk, verify_jwt

log = logging.getLogger("tether.middleware")

ASGIApp = Callable[[dict[str, Any], Any, Any], Any]


# -- keys ----------------------------------------------------------------------------
class JwksKeys:
    """Verification keys from the broker's JWKS, refreshed on an unknown ``kid`` (at most
    every ``min_refresh`` seconds, so junk kids cannot turn requests into fetches)."""

    def __init__(self, fetch: Callable[[], Mapping[str, Any]], *, min_refresh: float = 10.0) -> None:
        self._fetch = fetch
        self._min_refresh = min_refresh
        self._keys: dict[str, Any] = {}
        self._last = float("-inf")
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, client: httpx.Client | None = None, **kw: Any) -> JwksKeys:
        http = client or httpx.Client(timeout=5.0)

        def fetch() -> Mapping[str, Any]:
            r = http.get(url)
            r.raise_for_status()
            doc: Mapping[str, Any] = r.json()
            return doc

        return cls(fetch, **kw)

    def refresh(self) -> None:
        doc = self._fetch()
        keys = {}
        for jwk in doc.get("keys", []):
            if isinstance(jwk, Mapping) and isinstance(jwk.get("kid"), str):
                try:
                    keys[jwk["kid"]] = load_jwk(jwk)
                except TetherError:
                    continue  # one bad key must not hide the good ones
        with self._lock:
            self._keys, self._last = keys, time.monotonic()

    def key(self, kid: str) -> Any:
        with self._lock:
            found, stale = self._keys.get(kid), time.monotonic() - self._last >= self._min_refresh
        if found is None and stale:
            try:
                self.refresh()
            except Exception as exc:
                log.warning("jwks refresh failed: %s", exc)
            with self._lock:
                found = self._keys.get(kid)
        return found


# -- the feed ------------------------------------------------------------------------
class RevocationSource(Protocol):
    def fetch(self, cursor: int, wait: float) -> tuple[list[RevocationEvent], int]: ...


class FeedSource:
    """In-process: follow ``Runtime.credentials.feed`` directly."""

    def __init__(self, feed: Feed) -> None:
        self._feed = feed

    def fetch(self, cursor: int, wait: float) -> tuple[list[RevocationEvent], int]:
        return self._feed.wait(cursor, wait)


class HttpFeedSource:
    """Over HTTP: ``GET /v1/revocations?since=&wait=`` with a JWT-SVID from ``token()``."""

    def __init__(self, base_url: str, token: Callable[[], str], client: httpx.Client | None = None) -> None:
        self._url = base_url.rstrip("/") + "/v1/revocations"
        self._token = token
        self._client = client or httpx.Client(timeout=40.0)

    def fetch(self, cursor: int, wait: float) -> tuple[list[RevocationEvent], int]:
        r = self._client.get(
            self._url,
            params={"since": cursor, "wait": int(wait)},
            headers={"Authorization": f"Bearer {self._token()}"},
        )
        r.raise_for_status()
        doc = r.json()
        return [RevocationEvent(**e) for e in doc["events"]], int(doc["cursor"])


class RevocationFollower:
    """The revoked lease ids and dead task ids, kept current from a feed source."""

    def __init__(
        self,
        source: RevocationSource,
        *,
        max_staleness: float = 10.0,
        wait: float = 5.0,
        leeway: float = 30.0,
    ) -> None:
        self._source = source
        self.max_staleness = max_staleness
        self._wait = wait
        self._leeway = leeway
        self.cursor = 0
        self._leases: dict[str, float] = {}
        self._tasks: dict[str, float] = {}
        self._synced = float("-inf")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll_once(self, wait: float = 0.0) -> int:
        """Fetch and apply what is new; raises when the source fails (the caller retries)."""
        started = time.monotonic()
        events, cursor = self._source.fetch(self.cursor, wait)
        now = time.time()
        with self._lock:
            for e in events:
                if e.kind == "lease" and e.lease_id:
                    self._leases[e.lease_id] = e.expires_at
                else:
                    self._tasks[e.task_id] = e.expires_at
            self.cursor = cursor
            # A long poll proves freshness as of when it was sent, not when it returned.
            self._synced = started
            for table in (self._leases, self._tasks):
                for k in [k for k, exp in table.items() if exp + self._leeway < now]:
                    del table[k]  # dead by its own expiry now
        return len(events)

    def is_revoked(self, jti: str | None, txn: str | None) -> bool:
        with self._lock:
            return (jti is not None and jti in self._leases) or (txn is not None and txn in self._tasks)

    def fresh(self) -> bool:
        return time.monotonic() - self._synced <= self.max_staleness

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self.poll_once(self._wait)
                backoff = 0.5
            except Exception as exc:
                log.warning("revocation feed poll failed: %s", exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def start(self) -> RevocationFollower:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tether-revocation-follower", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


# -- the middleware ------------------------------------------------------------------
class TetherAuthMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        audience: str,
        issuer: str,
        keys: JwksKeys,
        follower: RevocationFollower,
        leeway: int = 30,
        max_token_bytes: int = 16 * 1024,
    ) -> None:
        if not audience or not issuer:
            raise ValueError("audience and issuer are required")  # no permissive default
        self.app = app
        self.audience = audience
        self.issuer = issuer
        self.keys = keys
        self.follower = follower
        self.leeway = leeway
        self.max_token_bytes = max_token_bytes

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a live credential for this service, or raise ``TetherError``."""

        claims = verify_jwt(
            token,
            key_for=key_by_kid(self.keys.key),
            algorithms=("ES256",),
            audience=self.audience,
            issuer=self.issuer,
            typ=(ACCESS_TOKEN_TYP,),
            leeway=self.leeway,
            max_bytes=self.max_token_bytes,
            required=("exp", "jti", "txn", "sub"),
        )
        if not self.follower.fresh():
            raise Unavailable(
                "the revocation feed is not current; refusing credentials until it is",
                code="revocation_feed_stale",
            )
        if self.follower.is_revoked(str(claims["jti"]), str(claims["txn"])):
            raise Unauthenticated("the credential has been revoked", code="token_revoked")
        return claims

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            values = [v for k, v in scope.get("headers") or [] if k.lower() == b"authorization"]
            if len(values) > 1:
                # Two proxies may each read a different one: refuse the ambiguity.
                raise Unauthenticated("send exactly one `Authorization` header", code="missing_token")
            auth = values[0].decode("latin-1") if values else ""
            kind, _, token = auth.partition(" ")
            if kind.lower() != "bearer" or not token.strip():
                raise Unauthenticated(
                    "send the credential as `Authorization: Bearer <token>`", code="missing_token"
                )
            claims = self.verify(token.strip())
        except TetherError as exc:
            await self._reject(exc, send, scope)
            return
        scope["tether"] = claims
        await self.app(scope, receive, send)

    async def _reject(self, exc: TetherError, send: Any, scope: dict[str, Any]) -> None:
        status = 503 if isinstance(exc, Unavailable) else 401
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"code": exc.code, "message": exc.message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 401:
            headers.append(
                (
                    b"www-authenticate",
                    f'Bearer error="invalid_token", error_description="{exc.code}"'.encode(),
                )
            )
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
