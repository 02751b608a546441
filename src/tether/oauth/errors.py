"""OAuth error responses: the ``error`` codes the RFCs name, never a Tether code in their place.

RFC 6749 §4.1.2.1 (authorization endpoint) and §5.2 (token endpoint), RFC 7009 §2.2.1
(revocation), RFC 8693 §2.2.2 (token exchange), RFC 8707 §2 (``invalid_target``),
RFC 6750 §3.1 (resource server: ``invalid_token``, ``insufficient_scope``).
"""

from __future__ import annotations

from dataclasses import dataclass

#: Every ``error`` value this server puts on the wire, with its HTTP status at the token
#: endpoint (the authorization endpoint redirects instead).
ERRORS: dict[str, int] = {
    "invalid_request": 400,
    "invalid_client": 401,
    "invalid_grant": 400,
    "unauthorized_client": 400,
    "unsupported_grant_type": 400,
    "unsupported_response_type": 400,
    "unsupported_token_type": 400,
    "invalid_scope": 400,
    "invalid_target": 400,
    "access_denied": 403,
    "invalid_dpop_proof": 400,  # RFC 9449 §5
    "server_error": 503,
    "temporarily_unavailable": 503,
}


@dataclass
class OAuthError(Exception):
    """One refusal: ``error`` (an RFC code), a short description, and the status to use."""

    error: str
    description: str
    status: int = 0
    #: False when the client or redirect URI itself is not trustworthy: then the browser
    #: sees an error page and is never sent back (RFC 6749 §4.1.2.1).
    redirectable: bool = True

    def __post_init__(self) -> None:
        if self.error not in ERRORS:
            raise ValueError(f"not an OAuth error code: {self.error}")
        if not self.status:
            self.status = ERRORS[self.error]
        super().__init__(self.description)

    def to_dict(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description[:300]}
