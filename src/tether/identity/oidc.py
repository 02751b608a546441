"""OIDC tokens as workload credentials (CI jobs, Kubernetes service accounts) and as
proof of a human delegator.

Each configured issuer is found by OpenID discovery (``<issuer>/.well-known/
openid-configuration``, whose ``issuer`` must equal the configured one exactly) unless
``jwks_url`` is given; its JWKS is cached and refreshed like a trust bundle, with a
rate-limited refetch on an unknown ``kid``. Tokens are checked by the strict
:func:`~tether.identity.jwt.verify_jwt` (exact ``iss``, required ``aud``/``exp``/``iat``/
``sub``, algorithm allowlist, no header keys). Then, for workloads, ``sub`` must match
one of the configured patterns, ``required_claims`` must match exactly, and the SPIFFE
ID is rendered from the claims. Codes, beyond those of ``verify_jwt``:

    subject_not_allowed   ``sub`` matches none of the issuer's ``subjects``
    claim_mismatch        a ``required_claims`` entry is missing or different
    claim_unmappable      a claim used in the SPIFFE ID template is missing or unsafe
    issuer_unavailable    (``Unavailable``) discovery or JWKS could not be fetched
"""

from __future__ import annotations

import fnmatch
import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from tether.config import DelegatorIssuer, OidcIssuer
from tether.errors import ConfigError, InvalidRequest, Unauthenticated, Unavailable
from tether.identity.jwt import DEFAULT_MAX_BYTES, verify_jwt
from tether.identity.spiffe_id import parse_spiffe_id
from tether.identity.svid import JwksUrlSource
from tether.model import Delegator, Workload

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.-]*)(:path)?\}")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
MAX_DISCOVERY_BYTES = 256 * 1024


def check_template(template: str, trust_domain: str) -> None:
    """Refuse a template that cannot yield a valid SPIFFE ID, or that is ambiguous."""
    names = _PLACEHOLDER.findall(template)
    if sum(1 for _, path in names if path) > 1:
        # Two multi-segment values could trade segments (a/b + c == a + b/c).
        raise ConfigError(
            f"`spiffe_id` `{template}` may hold at most one `{{claim:path}}`",
            code="config_invalid",
            field="identity.oidc_issuers[].spiffe_id",
        )
    sample = _PLACEHOLDER.sub("x", template.replace("{trust_domain}", trust_domain))
    try:
        sid = parse_spiffe_id(sample)
    except InvalidRequest as exc:
        raise ConfigError(
            f"`spiffe_id` `{template}` is not a SPIFFE ID template: {exc.message}",
            code="config_invalid",
            field="identity.oidc_issuers[].spiffe_id",
        ) from None
    if sid.is_trust_domain_id:
        raise ConfigError(
            f"`spiffe_id` `{template}` needs a path",
            code="config_invalid",
            field="identity.oidc_issuers[].spiffe_id",
        )


def render_spiffe_id(template: str, claims: Mapping[str, Any], trust_domain: str) -> str:
    def value(m: re.Match[str]) -> str:
        name, path = m.group(1), m.group(2)
        if name == "trust_domain" and not path:
            return trust_domain
        v = claims.get(name)
        if isinstance(v, bool) or not isinstance(v, str | int):
            raise Unauthenticated(f"claim `{name}` is missing or not a string", code="claim_unmappable")
        text = str(v)
        segments = text.split("/") if path else [text]
        # Claim values come from the token: only plain segments, never `..` or `/` unless
        # the template asked for a path, so a value cannot climb or reshape the ID.
        if not all(_SEGMENT.fullmatch(s) and s not in (".", "..") for s in segments) or len(text) > 255:
            raise Unauthenticated(f"claim `{name}` cannot be part of a SPIFFE ID", code="claim_unmappable")
        return text

    rendered = _PLACEHOLDER.sub(value, template)
    try:
        return str(parse_spiffe_id(rendered))
    except InvalidRequest as exc:
        raise Unauthenticated(
            f"the mapped SPIFFE ID is invalid: {exc.message}", code="claim_unmappable"
        ) from None


class IssuerKeys:
    """Discovery (once, retried on failure) then a refreshing JWKS source."""

    def __init__(
        self,
        issuer: str,
        jwks_url: str,
        client: httpx.Client,
        *,
        clock: Callable[[], float] = time.monotonic,
        retry_seconds: float = 30.0,
        cache_seconds: float = 300.0,
    ) -> None:
        self.issuer, self._client, self._clock = issuer, client, clock
        self._retry, self._cache = retry_seconds, cache_seconds
        self._lock = threading.Lock()
        self._source: JwksUrlSource | None = None
        self._next_discovery = 0.0
        if jwks_url:
            self._source = self._make_source(jwks_url)

    def _make_source(self, url: str) -> JwksUrlSource:
        return JwksUrlSource(
            url,
            self._client,
            timeout=5.0,
            cache_seconds=self._cache,
            retry_seconds=self._retry,
            max_stale_seconds=3600.0,
            clock=self._clock,
        )

    def _discover(self) -> JwksUrlSource:
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            with self._client.stream("GET", url, timeout=5.0) as resp:
                if resp.status_code != 200:
                    raise ValueError(f"status {resp.status_code}")
                body = bytearray()
                for chunk in resp.iter_bytes():
                    body += chunk
                    if len(body) > MAX_DISCOVERY_BYTES:
                        raise ValueError("discovery document too large")
            doc = json.loads(body)
        except (httpx.HTTPError, ValueError) as exc:
            raise Unavailable(
                f"OIDC discovery for `{self.issuer}` failed", code="issuer_unavailable"
            ) from exc
        # OpenID Connect Discovery section 4.3: the document must name exactly this issuer,
        # or a compromised or confused host could vouch for another one.
        if not isinstance(doc, dict) or doc.get("issuer") != self.issuer:
            raise Unavailable(f"discovery at `{url}` names another issuer", code="issuer_unavailable")
        jwks_uri = doc.get("jwks_uri")
        parts = urlsplit(jwks_uri) if isinstance(jwks_uri, str) else None
        loopback = parts is not None and parts.hostname in ("127.0.0.1", "::1", "localhost")
        if parts is None or not (parts.scheme == "https" or (parts.scheme == "http" and loopback)):
            raise Unavailable(
                f"discovery for `{self.issuer}` has no https `jwks_uri`", code="issuer_unavailable"
            )
        assert isinstance(jwks_uri, str)
        return self._make_source(jwks_uri)

    def source(self) -> JwksUrlSource:
        with self._lock:
            if self._source is None:
                now = self._clock()
                if now < self._next_discovery:
                    raise Unavailable(
                        f"OIDC issuer `{self.issuer}` is unavailable", code="issuer_unavailable"
                    )
                try:
                    self._source = self._discover()
                except Unavailable:
                    self._next_discovery = now + self._retry
                    raise
            return self._source

    def key_for(self, header: Mapping[str, Any], _claims: Mapping[str, Any]) -> Any | None:
        kid = header.get("kid")
        if not isinstance(kid, str):
            return None
        try:
            return self.source().lookup(kid)
        except Unavailable as exc:
            raise Unavailable(
                f"OIDC issuer `{self.issuer}` keys are unavailable", code="issuer_unavailable"
            ) from exc


class _Verifier:
    TYPES = ("JWT",)

    def __init__(
        self,
        issuer: str,
        audience: str,
        algorithms: tuple[str, ...],
        keys: IssuerKeys,
        leeway: int,
        max_bytes: int,
    ) -> None:
        self.issuer, self.audience, self.algorithms = issuer, audience, algorithms
        self.keys, self.leeway, self.max_bytes = keys, leeway, max_bytes

    def claims(self, token: str, now: float | None = None) -> dict[str, Any]:
        return verify_jwt(
            token,
            key_for=self.keys.key_for,
            algorithms=self.algorithms,
            audience=self.audience,
            issuer=self.issuer,
            typ=self.TYPES,
            require_typ=False,
            leeway=self.leeway,
            now=now,
            max_bytes=self.max_bytes,
            required=("exp", "iat", "sub"),
        )


def _subject_allowed(sub: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(sub, p) for p in patterns)


class OidcWorkloadVerifier(_Verifier):
    def __init__(
        self,
        cfg: OidcIssuer,
        keys: IssuerKeys,
        *,
        broker_audience: str,
        trust_domain: str,
        leeway: int,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        check_template(cfg.spiffe_id, trust_domain)
        super().__init__(cfg.issuer, cfg.audience or broker_audience, cfg.algorithms, keys, leeway, max_bytes)
        self.cfg, self.trust_domain = cfg, trust_domain

    def verify(self, token: str, now: float | None = None) -> Workload:
        claims = self.claims(token, now)
        sub = str(claims["sub"])
        if not _subject_allowed(sub, self.cfg.subjects):
            raise Unauthenticated(
                f"`sub` `{sub[:128]}` is not allowed for issuer `{self.issuer}`", code="subject_not_allowed"
            )
        for name, expected in self.cfg.required_claims.items():
            if claims.get(name) != expected:
                raise Unauthenticated(f"claim `{name}` must be `{expected}`", code="claim_mismatch")
        sid = parse_spiffe_id(render_spiffe_id(self.cfg.spiffe_id, claims, self.trust_domain))
        attrs = {"oidc_issuer": self.issuer, "oidc_sub": sub[:256]}
        for attr, claim in self.cfg.attributes.items():
            v = claims.get(claim)
            if isinstance(v, str | int) and not isinstance(v, bool):
                attrs[attr] = str(v)[:256]
        return Workload(
            spiffe_id=str(sid), trust_domain=sid.trust_domain, attestation="oidc", attributes=attrs
        )


class DelegatorVerifier(_Verifier):
    def __init__(
        self, cfg: DelegatorIssuer, keys: IssuerKeys, *, leeway: int, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        super().__init__(cfg.issuer, cfg.audience, cfg.algorithms, keys, leeway, max_bytes)
        self.cfg = cfg

    def verify(self, token: str, now: float | None = None) -> Delegator:
        claims = self.claims(token, now)
        sub = str(claims["sub"])
        if len(sub) > 256 or not _subject_allowed(sub, self.cfg.subjects):
            raise Unauthenticated(
                f"`sub` is not allowed for issuer `{self.issuer}`", code="subject_not_allowed"
            )
        return Delegator(subject=sub, issuer=self.issuer)
