"""Where an agent's JWT-SVID comes from: one small Protocol, several sources.

The SDK never holds a long-lived secret: it asks its source for a short-lived SVID for
the broker's audience when it opens a task, and asks again when the cached one is close
to expiry. Sources:

* :class:`WorkloadApiSvid` — the broker's local Workload API (Unix socket; the kernel
  tells the broker who is asking, so the agent presents nothing).
* :class:`FileSvid` — a file another process keeps fresh (SPIRE agent helper, a sidecar,
  a mounted Kubernetes projected token).
* :class:`CallableSvid` — your own function (e.g. an OIDC token from a CI runner).
* :class:`StaticSvid` — one token; for tests and scripts.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

from tether.errors import ConfigError, TetherError, Unauthenticated
from tether.sdk.workload import fetch_svid

__all__ = ["CachedSvid", "CallableSvid", "FileSvid", "StaticSvid", "SvidSource", "WorkloadApiSvid"]


@runtime_checkable
class SvidSource(Protocol):
    """Returns a JWT-SVID (compact JWS) whose ``aud`` includes ``audience``."""

    def fetch(self, audience: str) -> str: ...


class StaticSvid:
    def __init__(self, token: str) -> None:
        self._token = token.strip()

    def fetch(self, audience: str) -> str:
        return self._token


class CallableSvid:
    def __init__(self, fn: Callable[[str], str]) -> None:
        self._fn = fn

    def fetch(self, audience: str) -> str:
        token = self._fn(audience)
        if not isinstance(token, str) or not token:
            raise Unauthenticated("the SVID callable returned no token", code="svid_unavailable")
        return token.strip()


class FileSvid:
    """Reads the token from ``path`` on every fetch (the writer rotates it in place)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def fetch(self, audience: str) -> str:
        try:
            token = self.path.read_text().strip()
        except OSError as exc:
            raise Unauthenticated(
                f"cannot read the SVID file `{self.path}`: {exc.strerror}", code="svid_unavailable"
            ) from exc
        if not token:
            raise Unauthenticated(f"the SVID file `{self.path}` is empty", code="svid_unavailable")
        return token


class WorkloadApiSvid:
    """Fetches SVIDs from the broker's local Workload API on ``socket_path``.

    ``spiffe_id`` picks one identity when several registration entries match this process.
    """

    def __init__(
        self, socket_path: str | Path, *, spiffe_id: str | None = None, timeout: float = 10.0
    ) -> None:
        self.socket_path = Path(socket_path)
        self.spiffe_id = spiffe_id
        self.timeout = timeout

    def fetch(self, audience: str) -> str:
        return fetch_svid(self.socket_path, audience=audience, spiffe_id=self.spiffe_id, timeout=self.timeout)


def unverified_expiry(token: str) -> float | None:
    """``exp`` read without verification — only to decide when to renew; the broker verifies."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims.get("exp") if isinstance(claims, dict) else None
        return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None
    except (IndexError, ValueError, TypeError):
        return None


class CachedSvid:
    """Keeps one SVID per audience until ``margin`` seconds before it expires."""

    def __init__(
        self, source: SvidSource, *, margin: float = 30.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.source = source
        self.margin = margin
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[str, float]] = {}

    def fetch(self, audience: str) -> str:
        with self._lock:
            hit = self._cache.get(audience)
            if hit is not None and self._clock() < hit[1] - self.margin:
                return hit[0]
        try:
            token = self.source.fetch(audience)
        except TetherError:
            raise
        except Exception as exc:  # a source is user code: any failure means "no identity"
            raise Unauthenticated(
                f"the SVID source failed: {type(exc).__name__}: {exc}", code="svid_unavailable"
            ) from exc
        exp = unverified_expiry(token)
        if exp is not None:
            with self._lock:
                self._cache[audience] = (token, exp)
        return token

    def invalidate(self) -> None:
        with self._lock:
            self._cache.clear()


def as_source(svid: SvidSource | str | Path | Callable[[str], str]) -> SvidSource:
    """Accept the common shapes: a token, a file path, a callable, or a source."""
    if isinstance(svid, SvidSource):
        return svid
    if isinstance(svid, Path):
        return FileSvid(svid)
    if isinstance(svid, str):
        return StaticSvid(svid)
    if callable(svid):
        return CallableSvid(svid)
    raise ConfigError("`svid` must be a token, a Path, a callable or an SvidSource", code="config_invalid")
