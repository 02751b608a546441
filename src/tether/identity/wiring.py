"""Builds the identity layer from the core (called by ``Runtime.start``).

* the broker trusts its own JWT-SVIDs (its trust domain, its KeyRing, exact ``iss``);
* DPoP checks on every task-token use (``broker.token_binding``), replay cache purge;
* OIDC workload and delegator issuers;
* the local Workload API socket and the SPIFFE bundle endpoint;
* admin operations for registration entries.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tether.config import Settings
from tether.errors import ConfigError
from tether.identity import admin_ops
from tether.identity.dpop import DpopVerifier, ReplayCache
from tether.identity.oidc import DelegatorVerifier, IssuerKeys, OidcWorkloadVerifier
from tether.identity.service import IdentityService, LocalKeys, jwt_bundle
from tether.identity.workload_api import SvidIssuer, WorkloadApi, WorkloadApiServer

if TYPE_CHECKING:
    from tether.runtime import Core

BUNDLE_PATH = "/.well-known/spiffe-bundle"


@dataclass(frozen=True)
class IdentityLayer:
    service: IdentityService
    workload_api: WorkloadApi
    workload_socket: Path | None


def socket_path(settings: Settings) -> Path | None:
    value = settings.identity.workload_socket
    if not value:
        return None
    p = Path(value)
    return p if p.is_absolute() else settings.state_dir / p


def build(rt: Core) -> IdentityLayer:
    s = rt.settings
    ident = s.identity
    if s.trust_domain in rt.bundles:
        raise ConfigError(
            f"`trust_domain` `{s.trust_domain}` is also a configured trust bundle; give the "
            "broker a trust domain of its own",
            code="config_invalid",
            field="trust_domain",
        )
    local_keys = LocalKeys(rt.keys)
    rt.bundles.add_local(s.trust_domain, lambda: local_keys, issuer=s.broker_issuer)

    replay = ReplayCache(rt.db)
    dpop = DpopVerifier(
        replay,
        window_seconds=ident.dpop_window_seconds,
        leeway_seconds=s.limits.jwt_leeway_seconds,
        required=ident.dpop_required(s.environment),
        clock=rt.broker.clock,
    )
    rt.broker.token_binding = dpop.check_bound
    rt.periodic.append(replay.purge)

    client: httpx.Client | None = None
    oidc: dict[str, OidcWorkloadVerifier] = {}
    delegators: dict[str, DelegatorVerifier] = {}
    leeway, max_bytes = s.limits.jwt_leeway_seconds, s.limits.max_token_bytes
    if ident.oidc_issuers or ident.delegator_issuers:
        client = httpx.Client(follow_redirects=False)
        rt.on_close.append(client.close)
    for cfg in ident.oidc_issuers:
        if cfg.issuer == s.broker_issuer:
            raise ConfigError(
                "an OIDC issuer cannot be the broker itself",
                code="config_invalid",
                field="identity.oidc_issuers",
            )
        assert client is not None
        oidc[cfg.issuer] = OidcWorkloadVerifier(
            cfg,
            IssuerKeys(cfg.issuer, cfg.jwks_url, client),
            broker_audience=s.broker_audience,
            trust_domain=s.trust_domain,
            leeway=leeway,
            max_bytes=max_bytes,
        )
    for dcfg in ident.delegator_issuers:
        assert client is not None
        delegators[dcfg.issuer] = DelegatorVerifier(
            dcfg, IssuerKeys(dcfg.issuer, dcfg.jwks_url, client), leeway=leeway, max_bytes=max_bytes
        )

    service = IdentityService(
        db=rt.db,
        audit=rt.audit,
        svids=rt.svids,
        trust_domain=s.trust_domain,
        dpop=dpop,
        oidc=oidc,
        delegators=delegators,
        max_token_bytes=max_bytes,
    )
    issuer = SvidIssuer(rt.keys, issuer=s.broker_issuer, ttl_seconds=ident.svid_ttl_seconds)
    api = WorkloadApi(rt.db, rt.audit, issuer, lambda: {s.trust_domain: jwt_bundle(rt.keys)})
    rt.add_operations(admin_ops.OPERATIONS)

    async def spiffe_bundle(request: Request) -> Response:
        return JSONResponse(jwt_bundle(rt.keys), headers={"Cache-Control": "max-age=60"})

    rt.routes.append(Route(BUNDLE_PATH, spiffe_bundle, methods=["GET"]))

    path = socket_path(s)
    if path is not None:
        server = WorkloadApiServer(api, path)
        server.start()
        rt.on_close.append(server.close)
    return IdentityLayer(service, api, path)
