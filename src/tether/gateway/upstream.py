"""Where the real MCP server is, and one session with it.

:class:`Upstream` names a stdio command or a Streamable HTTP URL; :func:`open_session`
opens one initialized ``ClientSession``. Supervision (restarts, backoff) is the gateway's
(:meth:`tether.gateway.mcp.McpGateway.connect`).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client

from tether.errors import InvalidRequest, TetherError


class UpstreamGone(TetherError):
    """The upstream MCP server stopped more often than the gateway may restart it."""

    default_code = "upstream_gone"


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where the real MCP server is: a command (stdio) or a Streamable HTTP URL."""

    command: Sequence[str] = ()
    url: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)  # static headers for an HTTP upstream

    def __post_init__(self) -> None:
        if bool(self.command) == bool(self.url):
            raise InvalidRequest("name exactly one upstream: a command or a URL", code="invalid_upstream")
        if self.url and not self.url.startswith(("http://", "https://")):
            raise InvalidRequest("the upstream URL must be http(s)://…", code="invalid_upstream")


#: Starts a stdio upstream and yields its (read, write) streams, like ``stdio_client``.
StdioTransport = Callable[
    [StdioServerParameters, TextIO], contextlib.AbstractAsyncContextManager[tuple[Any, Any]]
]


class CallHeaders:
    """The headers of the call being forwarded to an HTTP upstream: the per-call
    credential the broker minted for it (``upstream_credential_headers``), never the
    agent's token. Holders of :attr:`lock` forward one call at a time, so a credential
    cannot ride on another task's request."""

    def __init__(self) -> None:
        self.lock = anyio.Lock()
        self.current: dict[str, str] = {}

    async def hook(self, request: Any) -> None:
        for name, value in self.current.items():
            request.headers[name] = value


@contextlib.asynccontextmanager
async def open_session(
    upstream: Upstream,
    on_message: Any,
    timeout: float,
    call_headers: CallHeaders | None = None,
    stdio: StdioTransport | None = None,
) -> AsyncIterator[ClientSession]:
    """One initialized session: a fresh subprocess (stdio) or connection (HTTP).

    ``stdio`` starts the subprocess instead of the SDK's ``stdio_client``
    (:meth:`tether.gateway.mcp_relay.Relay.process`)."""
    async with contextlib.AsyncExitStack() as stack:
        if upstream.command:
            params = StdioServerParameters(
                command=upstream.command[0], args=list(upstream.command[1:]), env=dict(upstream.env) or None
            )
            transport = (
                stdio(params, sys.stderr) if stdio is not None else stdio_client(params, errlog=sys.stderr)
            )
            read, write = await stack.enter_async_context(transport)
        else:
            import httpx2
            from mcp.client.streamable_http import streamable_http_client

            hooks = {"request": [call_headers.hook]} if call_headers is not None else {}
            client = await stack.enter_async_context(
                httpx2.AsyncClient(
                    headers=dict(upstream.headers), timeout=timeout, follow_redirects=False, event_hooks=hooks
                )
            )
            read, write = await stack.enter_async_context(
                streamable_http_client(upstream.url, http_client=client)
            )
        session = await stack.enter_async_context(ClientSession(read, write, message_handler=on_message))
        await session.initialize()
        yield session
