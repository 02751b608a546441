"""Who an OAuth client is: pre-registered in config, or described by its own metadata
document (an https ``client_id``), and the agent identity policy sees for it.

An OAuth client is not an attested workload: nothing proved which process holds it, only
that a human consented to it. So it becomes an agent of its own kind — a SPIFFE ID under
``/oauth-client/`` in the broker's trust domain, derived from the client id, with
``attestation = "oauth-client"`` and the tags ``oauth_client_id`` and ``oauth_client_kind``
— and policies can treat it differently from attested workloads (``docs/oauth.md``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from tether.config_oauth import OAuthSettings
from tether.model import Workload
from tether.oauth.cimd import CimdFetcher
from tether.oauth.errors import OAuthError
from tether.oauth.metadata import client_document
from tether.oauth.uris import redirect_uri_matches

ATTESTATION = "oauth-client"


@dataclass(frozen=True, slots=True)
class Client:
    client_id: str
    name: str
    redirect_uris: tuple[str, ...]
    kind: str  # "registered" | "metadata-document"

    def redirect_allowed(self, uri: str) -> bool:
        return any(redirect_uri_matches(r, uri) for r in self.redirect_uris)

    def agent(self, trust_domain: str) -> Workload:
        digest = hashlib.sha256(self.client_id.encode()).hexdigest()[:32]
        return Workload(
            spiffe_id=f"spiffe://{trust_domain}/oauth-client/{digest}",
            trust_domain=trust_domain,
            attestation=ATTESTATION,
            attributes={"oauth_client_id": self.client_id[:200], "oauth_client_kind": self.kind},
        )


class Clients:
    def __init__(self, settings: OAuthSettings, fetcher: CimdFetcher | None) -> None:
        self.settings = settings
        self.fetcher = fetcher

    def get(self, client_id: str | None) -> Client:
        """The client, or a non-redirectable ``invalid_client`` (its redirect URI is unknown)."""
        if not client_id or len(client_id) > 2048:
            raise OAuthError("invalid_request", "`client_id` is required", redirectable=False)
        found = self.settings.client(client_id)
        if found is not None:
            return Client(found.client_id, found.name, found.redirect_uris, "registered")
        if client_id.startswith("https://") and self.fetcher is not None:
            doc = self.fetcher.get(client_id)
            try:
                name, uris = client_document(doc, client_id)
            except OAuthError as exc:
                exc.redirectable = False
                raise
            return Client(client_id, name, uris, "metadata-document")
        raise OAuthError("invalid_client", f"unknown client `{client_id[:100]}`", redirectable=False)
