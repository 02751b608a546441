"""Workload identity: SPIFFE IDs, strict JWT verification, JWT-SVIDs.

The modules are the implementation; this is the public surface (pinned by a test).
"""

from tether.identity.jwt import (
    ANY,
    SUPPORTED_ALGORITHMS,
    KeyLookup,
    jwk_thumbprint,
    load_jwk,
    public_jwk,
    sign_jwt,
    verify_jwt,
)
from tether.identity.spiffe_id import SpiffeId, parse_spiffe_id, valid_trust_domain
from tether.identity.svid import KeysProvider, SvidVerifier, TrustBundles, parse_jwks

__all__ = [
    "ANY",
    "SUPPORTED_ALGORITHMS",
    "KeyLookup",
    "KeysProvider",
    "SpiffeId",
    "SvidVerifier",
    "TrustBundles",
    "jwk_thumbprint",
    "load_jwk",
    "parse_jwks",
    "parse_spiffe_id",
    "public_jwk",
    "sign_jwt",
    "valid_trust_domain",
    "verify_jwt",
]
