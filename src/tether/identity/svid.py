"""JWT-SVID verification against per-trust-domain bundles (SPIFFE JWT-SVID spec).

A JWT-SVID names its workload in ``sub``; the trust domain of that SPIFFE ID decides
which bundle may have signed it. Keys are looked up in *that* domain's bundle only, so a
compromised or merely foreign domain can never mint identities in another one. Errors
are ``Unauthenticated`` with the codes of :mod:`tether.identity.jwt`, plus:

    bad_subject          ``sub`` missing, not a SPIFFE ID, or a bare trust domain ID
    untrusted_domain     no bundle is configured for the trust domain of ``sub``
    bundle_unavailable   (``Unavailable``) a bundle URL could not be fetched and no
                         recent copy is cached
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx

from tether.config import TrustBundle
from tether.errors import ConfigError, InvalidRequest, TetherError, Unauthenticated, Unavailable
from tether.identity.jwt import ANY, DEFAULT_MAX_BYTES, load_jwk, verify_jwt
from tether.identity.spiffe_id import SpiffeId, parse_spiffe_id, valid_trust_domain
from tether.model import Workload

#: ``keys_provider()`` returns the keys currently trusted, by kid (public or private
#: key objects; only the public half is used). Called on every verification.
KeysProvider = Callable[[], Mapping[str, Any]]

MAX_BUNDLE_BYTES = 1024 * 1024


def parse_jwks(doc: Any) -> dict[str, Any]:
    """Keys of a JWKS / SPIFFE bundle document by kid; raise ``jwk_invalid``.

    SPIFFE bundles mix X.509 authorities (``use: x509-svid``, no kid) with JWT
    authorities; only the latter can sign JWT-SVIDs, so the former are skipped.
    """
    if not isinstance(doc, Mapping) or not isinstance(doc.get("keys"), list):
        raise InvalidRequest("JWKS must be an object with a `keys` list", code="jwk_invalid")
    keys: dict[str, Any] = {}
    for i, jwk in enumerate(doc["keys"]):
        if isinstance(jwk, Mapping) and jwk.get("use") == "x509-svid":
            continue
        kid = jwk.get("kid") if isinstance(jwk, Mapping) else None
        if not isinstance(kid, str) or not kid:
            raise InvalidRequest(f"key {i} has no `kid`", code="jwk_invalid")
        if kid in keys:
            # Two keys under one kid: which one verifies would depend on file order.
            raise InvalidRequest(f"`kid` `{kid}` appears twice", code="jwk_invalid")
        keys[kid] = load_jwk(jwk)
    return keys


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _UrlSource:
    """A JWKS fetched over HTTPS, cached; the last good copy survives short outages.

    A SPIFFE bundle's ``spiffe_refresh_hint`` (seconds) sets when it is fetched again;
    plain JWKS are kept ``cache_seconds``. An unknown ``kid`` (the issuer rotated) triggers
    one early refetch, at most once per ``retry_seconds`` for the whole source, and a fetch
    happens at most once per ``retry_seconds`` after a failure: a flood of tokens with
    made-up kids cannot turn into a flood of requests to the bundle endpoint.
    """

    MIN_REFRESH = 1.0
    MAX_REFRESH = 24 * 3600.0

    def __init__(
        self,
        url: str,
        client: httpx.Client,
        *,
        timeout: float,
        cache_seconds: float,
        retry_seconds: float,
        max_stale_seconds: float,
        clock: Callable[[], float],
    ) -> None:
        self._url, self._client, self._timeout, self._clock = url, client, timeout, clock
        self._cache, self._retry, self._max_stale = cache_seconds, retry_seconds, max_stale_seconds
        self._refresh = cache_seconds
        self._lock = threading.Lock()
        self._keys: dict[str, Any] | None = None
        self._fetched_at = 0.0
        self._next_fetch = 0.0
        self._last_attempt = float("-inf")
        self.fetches = 0  # observable by tests: how often the endpoint was asked

    def _fetch(self) -> dict[str, Any]:
        with self._client.stream("GET", self._url, timeout=self._timeout) as resp:
            if resp.status_code != 200:
                raise ValueError(f"status {resp.status_code}")
            body = bytearray()
            for chunk in resp.iter_bytes():
                body += chunk
                if len(body) > MAX_BUNDLE_BYTES:
                    raise ValueError("bundle too large")
        doc = json.loads(body)
        hint = doc.get("spiffe_refresh_hint") if isinstance(doc, dict) else None
        if isinstance(hint, int | float) and not isinstance(hint, bool) and hint > 0:
            self._refresh = min(max(float(hint), self.MIN_REFRESH), self.MAX_REFRESH)
        else:
            self._refresh = self._cache
        return parse_jwks(doc)

    def _attempt(self, now: float) -> None:
        self._last_attempt = now
        self.fetches += 1
        try:
            self._keys, self._fetched_at = self._fetch(), now
            self._next_fetch = now + self._refresh
        except (httpx.HTTPError, ValueError, InvalidRequest):
            self._next_fetch = now + self._retry

    def _current(self, now: float) -> dict[str, Any]:
        if self._keys is None or now - self._fetched_at > self._max_stale:
            raise Unavailable(f"trust bundle `{self._url}` is unavailable", code="bundle_unavailable")
        return self._keys

    def __call__(self) -> Mapping[str, Any]:
        with self._lock:
            now = self._clock()
            if now >= self._next_fetch:
                self._attempt(now)
            return self._current(now)

    def lookup(self, kid: str) -> Any | None:
        """The key ``kid``; an unknown kid refetches early, rate-limited per source."""
        with self._lock:
            now = self._clock()
            if now >= self._next_fetch:
                self._attempt(now)
            key = self._current(now).get(kid)
            if key is None and now - self._last_attempt >= self._retry:
                self._attempt(now)
                key = self._current(now).get(kid)
            return key


@dataclass(frozen=True, slots=True)
class _Domain:
    keys: KeysProvider
    issuer: str | None


class TrustBundles:
    """Trust domain → the keys (by kid) that may sign JWT-SVIDs for it."""

    def __init__(
        self,
        *,
        http_client: httpx.Client | None = None,
        http_timeout: float = 5.0,
        cache_seconds: float = 300.0,
        retry_seconds: float = 30.0,
        max_stale_seconds: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._domains: dict[str, _Domain] = {}
        self._client = http_client
        self._http = {
            "timeout": http_timeout,
            "cache_seconds": cache_seconds,
            "retry_seconds": retry_seconds,
            "max_stale_seconds": max_stale_seconds,
        }
        self._clock = clock

    @classmethod
    def from_settings(cls, bundles: Iterable[TrustBundle], base_dir: Path, **options: Any) -> TrustBundles:
        """Load every configured bundle; files are read now, so a bad one stops startup."""
        tb = cls(**options)
        for b in bundles:
            if b.jwks_file is not None:
                path = Path(b.jwks_file)
                tb.add_jwks_file(
                    b.trust_domain, path if path.is_absolute() else base_dir / path, issuer=b.issuer
                )
            elif b.jwks_url is not None:
                tb.add_jwks_url(b.trust_domain, b.jwks_url, issuer=b.issuer)
            else:
                raise ConfigError(f"trust bundle `{b.trust_domain}` has no keys source")
        return tb

    def _add(self, trust_domain: str, keys: KeysProvider, issuer: str | None) -> None:
        if not valid_trust_domain(trust_domain):
            raise ConfigError(f"`{trust_domain}` is not a valid trust domain")
        if trust_domain in self._domains:
            raise ConfigError(f"trust domain `{trust_domain}` already has a bundle")
        self._domains[trust_domain] = _Domain(keys, issuer)

    def add_jwks(self, trust_domain: str, jwks: Mapping[str, Any], *, issuer: str | None = None) -> None:
        """Trust a fixed JWKS document for ``trust_domain``."""
        keys = parse_jwks(jwks)
        self._add(trust_domain, lambda: keys, issuer)

    def add_jwks_file(self, trust_domain: str, path: Path, *, issuer: str | None = None) -> None:
        try:
            keys = parse_jwks(json.loads(path.read_bytes()))
        except (OSError, ValueError, InvalidRequest) as exc:
            why = exc.message if isinstance(exc, TetherError) else str(exc)
            raise ConfigError(
                f"trust bundle `{trust_domain}`: cannot load `{path}`: {why}", code="config_invalid"
            ) from exc
        self._add(trust_domain, lambda: keys, issuer)

    def add_jwks_url(self, trust_domain: str, url: str, *, issuer: str | None = None) -> None:
        """Trust the JWKS at ``url``, fetched lazily. Plain HTTP only to loopback (tests)."""
        parts = urlsplit(url)
        if not (parts.scheme == "https" or (parts.scheme == "http" and _is_loopback(parts.hostname or ""))):
            raise ConfigError(f"trust bundle `{trust_domain}`: `{url}` must be an https URL")
        if self._client is None:
            self._client = httpx.Client(follow_redirects=False)
        source = _UrlSource(
            url,
            self._client,
            timeout=self._http["timeout"],
            cache_seconds=self._http["cache_seconds"],
            retry_seconds=self._http["retry_seconds"],
            max_stale_seconds=self._http["max_stale_seconds"],
            clock=self._clock,
        )
        self._add(trust_domain, source, issuer)

    def add_local(self, trust_domain: str, keys_provider: KeysProvider, *, issuer: str | None = None) -> None:
        """Trust keys held in-process, e.g. the broker's own signing keys."""
        self._add(trust_domain, keys_provider, issuer)

    def close(self) -> None:
        """Close the HTTP client used for bundle URLs, if any."""
        if self._client is not None:
            self._client.close()

    @property
    def trust_domains(self) -> frozenset[str]:
        return frozenset(self._domains)

    def __contains__(self, trust_domain: object) -> bool:
        return trust_domain in self._domains

    def issuer_for(self, trust_domain: str) -> str | None:
        return self._domains[trust_domain].issuer

    def key_for(self, trust_domain: str, kid: str) -> Any | None:
        """The key ``kid`` of ``trust_domain`` only, or ``None``; never another domain's."""
        domain = self._domains.get(trust_domain)
        if domain is None:
            return None
        lookup = getattr(domain.keys, "lookup", None)  # URL sources refetch on an unknown kid
        return lookup(kid) if lookup is not None else domain.keys().get(kid)


class SvidVerifier:
    """Verifies JWT-SVIDs presented to the broker and returns the :class:`Workload`."""

    #: The JWT-SVID spec allows RS, ES and PS; it forbids HS and ``none`` (and EdDSA).
    ALGORITHMS: ClassVar[frozenset[str]] = frozenset(
        {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"}
    )
    TYPES: ClassVar[tuple[str, ...]] = ("JWT", "JOSE")

    def __init__(
        self, bundles: TrustBundles, audience: str, leeway: int, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        if not audience:
            raise ValueError("audience is required")
        if not 0 <= leeway <= 300:
            raise ValueError("leeway must be between 0 and 300 seconds")
        self._bundles, self._audience = bundles, audience
        self._leeway, self._max_bytes = leeway, max_bytes

    def _subject(self, claims: Mapping[str, Any]) -> SpiffeId:
        sub = claims.get("sub")
        if not isinstance(sub, str):
            raise Unauthenticated("JWT-SVID needs a `sub` SPIFFE ID", code="bad_subject")
        try:
            sid = parse_spiffe_id(sub)
        except InvalidRequest as exc:
            raise Unauthenticated(
                f"`sub` is not a valid SPIFFE ID: {exc.message}", code="bad_subject"
            ) from exc
        if sid.is_trust_domain_id:
            raise Unauthenticated("`sub` names a trust domain, not a workload", code="bad_subject")
        if sid.trust_domain not in self._bundles:
            raise Unauthenticated(
                f"trust domain `{sid.trust_domain}` is not trusted", code="untrusted_domain"
            )
        return sid

    def _key_for(self, header: Mapping[str, Any], claims: Mapping[str, Any]) -> Any | None:
        # The claims are unverified here; `sub` only selects which bundle may verify,
        # and the signature check that follows covers `sub` itself.
        sid = self._subject(claims)
        kid = header.get("kid")
        return None if kid is None else self._bundles.key_for(sid.trust_domain, kid)

    def verify(self, token: str, now: float | None = None) -> Workload:
        claims = verify_jwt(
            token,
            key_for=self._key_for,
            algorithms=self.ALGORITHMS,
            audience=self._audience,
            issuer=ANY,  # checked per trust domain below
            typ=self.TYPES,
            require_typ=False,
            leeway=self._leeway,
            now=now,
            max_bytes=self._max_bytes,
            required=("exp",),  # `sub`: in _key_for; `aud`: via audience
        )
        sid = self._subject(claims)
        expected = self._bundles.issuer_for(sid.trust_domain)
        if expected is not None and claims.get("iss") != expected:
            raise Unauthenticated(f"token is not from issuer `{expected}`", code="bad_issuer")
        return Workload(spiffe_id=str(sid), trust_domain=sid.trust_domain, attestation="jwt-svid")


#: A cached, refreshing JWKS at a URL (used for OIDC issuers too).
JwksUrlSource = _UrlSource
