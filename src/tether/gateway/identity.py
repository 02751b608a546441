"""The gateway's own identity: a JWT-SVID renewed before it expires.

A gateway proves to the broker that it is a configured enforcement point with its own
JWT-SVID on every enforcer-API call. A long-lived gateway must renew it like any SVID
holder: :class:`GatewayIdentity` asks its source (the local Workload API, a file SPIRE
rewrites, …) again once the cached SVID is within ``margin`` seconds of expiry.

When renewal fails the failure is logged, and the last SVID is still presented while it
has one: the broker then refuses it as expired (``gateway_identity_expired``) and records
the refusal in the audit log, so an operator sees the gateway lost its identity — and the
agent is told that the *gateway's* identity expired, not its own token.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from tether.errors import TetherError, Unauthenticated
from tether.sdk.svid import SvidSource, unverified_expiry

log = logging.getLogger("tether.gateway.identity")

IDENTITY_EXPIRED = "gateway_identity_expired"


class GatewayIdentity:
    """A callable returning this gateway's current JWT-SVID for ``audience``."""

    def __init__(
        self,
        source: SvidSource,
        audience: str,
        *,
        margin: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = source
        self.audience = audience
        self.margin = margin
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires = float("-inf")
        self.renewals = 0  # SVIDs fetched so far (the first one included)

    def _due(self, now: float) -> bool:
        # Renew at `margin` before expiry, or halfway through a lifetime shorter than that.
        return self._token is None or now >= self._expires - self.margin

    def __call__(self) -> str:
        with self._lock:
            now = self._clock()
            if not self._due(now):
                assert self._token is not None
                return self._token
            try:
                token = self.source.fetch(self.audience)
            except Exception as exc:  # any source failure means "no fresh identity"
                reason = exc.message if isinstance(exc, TetherError) else f"{type(exc).__name__}: {exc}"
                log.error("the gateway could not renew its SVID: %s", reason)
                if self._token is not None:
                    # Still valid: keep serving. Expired: the broker refuses and audits it.
                    return self._token
                raise Unauthenticated(
                    f"the gateway's own identity could not be obtained ({reason}); "
                    "check its Workload API registration or SVID file",
                    code=IDENTITY_EXPIRED,
                ) from None
            exp = unverified_expiry(token)
            self._token = token
            self.renewals += 1
            if exp is None:
                self._expires = float("-inf")  # unknown lifetime: ask the source every time
            else:
                lifetime = max(0.0, exp - now)
                self._expires = exp if lifetime > 2 * self.margin else now + lifetime / 2 + self.margin
            return token
