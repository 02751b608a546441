"""The demo's upstream HTTP service: a small CRM that accepts only tether credentials.

Run as its own process (``python -m tether.demo.upstream``). Every request must carry a
tether ``jwt`` credential for audience ``crm``, verified offline against the broker's
JWKS and checked against the revocation feed (``tether.credentials.middleware``), so a
credential dies here when its task closes. The feed is read with this service's own
JWT-SVID from the local Workload API — the service holds no shared secret either.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tether.credentials.middleware import HttpFeedSource, JwksKeys, RevocationFollower, TetherAuthMiddleware
from tether.sdk.svid import CachedSvid, WorkloadApiSvid

CUSTOMERS = {
    "42": {
        "id": "42",
        "name": "Dana Example",
        "email": "dana@example.com",
        "plan": "enterprise",
        "card_last4": "4242",
    }
}


async def customer(request: Request) -> Response:
    claims: dict[str, Any] = request.scope.get("tether", {})
    row = CUSTOMERS.get(request.path_params["cid"])
    if row is None:
        return JSONResponse({"code": "not_found"}, status_code=404)
    return JSONResponse({"customer": row, "served_to_task": claims.get("txn")})


def healthz_for(follower: RevocationFollower) -> Any:
    async def healthz(request: Request) -> Response:
        # Ready only once the revocation feed is in sync: before that every request is refused.
        fresh = follower.fresh()
        return JSONResponse({"status": "ok" if fresh else "syncing"}, status_code=200 if fresh else 503)

    return healthz


def build(broker: str, audience: str, issuer: str, broker_audience: str, socket: str, spiffe_id: str) -> Any:
    svid = CachedSvid(WorkloadApiSvid(socket, spiffe_id=spiffe_id))
    follower = RevocationFollower(
        HttpFeedSource(broker, lambda: svid.fetch(broker_audience)), max_staleness=10.0, wait=1.0
    )
    follower.start()
    app = Starlette(routes=[Route("/customers/{cid}", customer), Route("/healthz", healthz_for(follower))])
    keys = JwksKeys.from_url(broker + "/.well-known/jwks.json")
    guarded = TetherAuthMiddleware(app, audience=audience, issuer=issuer, keys=keys, follower=follower)

    async def root(scope: Any, receive: Any, send: Any) -> None:
        # Health checks answer without a credential so the demo knows when we are up.
        if scope["type"] == "http" and scope["path"] == "/healthz":
            await app(scope, receive, send)
        else:
            await guarded(scope, receive, send)

    return root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument(
        "--config", required=True, help="JSON: broker, audience, issuer, broker_audience, socket, spiffe_id"
    )
    args = p.parse_args()
    cfg = json.loads(args.config)
    uvicorn.run(build(**cfg), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
