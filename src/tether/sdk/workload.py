"""Client of the broker's local Workload API (a Unix socket; one JSON object per line).

The kernel tells the broker who is asking (peer credentials), so a process presents
nothing and receives short-lived JWT-SVIDs for the audiences it names. The server side
is ``tether.identity.workload_api``; this side imports nothing of the broker.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tether.errors import Conflict, ErrorCode, TetherError, Unavailable
from tether.linesocket import exchange

__all__ = ["WorkloadApiError", "call", "fetch_bundles", "fetch_svid", "fetch_svids"]


class WorkloadApiError(TetherError):
    """An error returned by the Workload API (``code`` is the broker's)."""

    status = 403


def call(socket_path: Path | str, request: Mapping[str, Any], *, timeout: float = 10.0) -> dict[str, Any]:
    """One request to the Workload API; raises the broker's error as a ``TetherError``."""
    path = Path(socket_path)
    try:
        buf = exchange(path, request, timeout=timeout)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise Unavailable(
            f"no Workload API is listening on `{path}`; is `tether up` running?",
            code=ErrorCode.WORKLOAD_API_UNAVAILABLE,
        ) from exc
    except PermissionError as exc:
        raise Unavailable(
            f"cannot reach `{path}`: permission denied (set `identity.workload_socket` "
            "to a path other users can reach)",
            code=ErrorCode.WORKLOAD_API_UNAVAILABLE,
        ) from exc
    try:
        reply = json.loads(buf)
    except ValueError:
        raise Unavailable(
            "the Workload API closed the connection", code=ErrorCode.WORKLOAD_API_UNAVAILABLE
        ) from None
    if not isinstance(reply, dict):
        raise Unavailable("the Workload API answered no object", code=ErrorCode.WORKLOAD_API_UNAVAILABLE)
    if not reply.get("ok"):
        err = reply.get("error") or {}
        raise WorkloadApiError(
            str(err.get("message", "request refused")),
            code=str(err.get("code", "error")),
            **{k: v for k, v in err.items() if k not in ("code", "message")},
        )
    return dict(reply)


def fetch_svids(
    socket_path: Path | str,
    *,
    audience: str | Sequence[str],
    spiffe_id: str | None = None,
    timeout: float = 10.0,
) -> list[dict[str, Any]]:
    """Every JWT-SVID this process may have for ``audience`` (one per matching entry)."""
    aud = [audience] if isinstance(audience, str) else list(audience)
    reply = call(
        socket_path, {"op": "fetch_jwt_svid", "audience": aud, "spiffe_id": spiffe_id}, timeout=timeout
    )
    return list(reply["svids"])


def fetch_svid(
    socket_path: Path | str,
    *,
    audience: str | Sequence[str],
    spiffe_id: str | None = None,
    timeout: float = 10.0,
) -> str:
    """One JWT-SVID for this process (the SDK and ``tether svid fetch`` use this)."""
    svids = fetch_svids(socket_path, audience=audience, spiffe_id=spiffe_id, timeout=timeout)
    if len(svids) != 1:
        ids = ", ".join(f"`{s['spiffe_id']}`" for s in svids)
        raise Conflict(
            f"several identities match this process ({ids}); choose one with `spiffe_id`",
            code=ErrorCode.AMBIGUOUS_IDENTITY,
            spiffe_ids=[s["spiffe_id"] for s in svids],
        )
    return str(svids[0]["svid"])


def fetch_bundles(socket_path: Path | str, *, timeout: float = 10.0) -> dict[str, Any]:
    """The JWT bundles (JWKS per trust domain) this broker trusts."""
    return dict(call(socket_path, {"op": "fetch_jwt_bundles"}, timeout=timeout)["bundles"])
