"""A task per stdio session, for MCP clients that cannot hold a task token themselves.

A stock desktop client launches ``tether gateway mcp … --intent I --scope A=R`` and
speaks MCP over stdio; it sends no token and no DPoP proof. The gateway then opens the
task itself, as the workload the local Workload API says it is, bound (RFC 9449) to a
key that exists only in this process's memory, signs a fresh proof for every call, and
closes the task when the client disconnects. Nothing is pasted into a config file.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import httpx

from tether.errors import InvalidRequest
from tether.identity.dpop import DpopProof, make_proof
from tether.sdk.client import AsyncClient
from tether.sdk.svid import SvidSource

log = logging.getLogger("tether.gateway.session")


@dataclass(frozen=True, slots=True)
class SessionTask:
    task_id: str
    token: str
    proof: Callable[[], DpopProof]  # a fresh, single-use proof for the next call


def parse_scope(values: Sequence[str]) -> list[tuple[str, str]]:
    """``ACTION=RESOURCE`` items (e.g. ``tool:call=fs``) → grants; errors name the item."""
    out = []
    for i, value in enumerate(values):
        action, sep, resource = value.partition("=")
        if not sep or not action.strip() or not resource.strip():
            raise InvalidRequest(
                f"`--scope` item {i + 1} must be ACTION=RESOURCE (e.g. tool:call=fs), got `{value}`",
                code="invalid_scope",
            )
        out.append((action.strip(), resource.strip()))
    if not out:
        raise InvalidRequest("give at least one `--scope ACTION=RESOURCE`", code="invalid_scope")
    return out


@contextlib.asynccontextmanager
async def session_task(
    broker_url: str,
    audience: str,
    svid: SvidSource,
    *,
    intent: str,
    scope: Sequence[tuple[str, str]],
    ttl: int,
    description: str = "",
    proof_url: str = "",
    http: httpx.AsyncClient | None = None,
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[SessionTask]:
    """Open a DPoP-bound task for one session; close it on exit, whatever happened.

    ``tls`` is the context the gateway reaches the broker with (``--broker-ca``, its client
    certificate: docs/tls.md), so a broker that requires client certificates answers the
    session's open and close as it answers the gateway's decisions. It is the same object
    the decisions use, so SIGHUP's re-read of the certificate reaches the close too."""
    own = None  # the HTTP client made here for ``tls``, closed here
    if http is None and tls is not None:
        http = own = httpx.AsyncClient(timeout=10.0, verify=tls)
    client = AsyncClient(broker_url, svid=svid, audience=audience, dpop=True, http=http)
    key = client._dpop
    url = proof_url or broker_url.rstrip("/") + "/v1/gateway/authorize"
    try:
        task = await client.task(intent, scope, ttl=ttl, description=description or "stdio MCP session")
        log.info("opened task %s for this session", task.id)

        def proof() -> DpopProof:
            return DpopProof(
                proof=make_proof(key, "POST", url, access_token=task.token), method="POST", url=url
            )

        try:
            yield SessionTask(task.id, task.token, proof)
        finally:
            try:
                await task.close()
                log.info("closed task %s: the client disconnected", task.id)
            except Exception as exc:  # it still expires on its own; say so rather than hide it
                log.error("could not close task %s (it expires at its TTL): %s", task.id, exc)
    finally:
        await client.aclose()
        if own is not None:
            await own.aclose()
