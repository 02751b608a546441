"""The ``inject`` connector: an upstream secret the enforcement point adds to the request.

The agent gets a lease (its id and expiry) and never the secret; the gateway receives
``for_enforcer = {"kind": "inject", "header", "value"}`` and sets that header on the
forwarded call. Catalog options: ``secret`` (the stored secret's name, default the
service id) and ``header`` (overrides the header stored with the secret).
"""

from __future__ import annotations

from typing import Any

from tether.catalog import Resource
from tether.credentials.connectors.base import Minted, MintRequest
from tether.credentials.leases import Lease
from tether.credentials.secrets import SecretStore


def secret_name(resource: Resource) -> str:
    name = resource.options.get("secret", resource.service)
    return str(name)


class InjectConnector:
    name = "inject"
    offline_revoke = True  # the secret stays upstream; revoking stops enforcement points injecting it

    def __init__(self, secrets: SecretStore) -> None:
        self._secrets = secrets

    def plan(self, resource: Resource, lease_id: str) -> dict[str, Any]:
        return {"secret": secret_name(resource)}

    def mint(self, req: MintRequest) -> Minted:
        header, value = self._secrets.get(secret_name(req.resource))
        header = str(req.resource.options.get("header", header))
        return Minted(
            for_agent={"kind": "inject", "expires_at": req.lease.expires_at},
            for_enforcer={"kind": "inject", "header": header, "value": value},
            material={"secret": secret_name(req.resource), "header": header},
        )

    def revoke(self, lease: Lease) -> None:
        return None

    def health(self) -> None:
        return None
