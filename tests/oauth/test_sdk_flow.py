"""The MCP Python SDK's own OAuth client against the real gateway and broker: discovery →
authorize → consent through the HTML form → token → tools decided by policy → close the
task → the next call is refused."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)

from tether.audit.chain import capture_events
from tether.testing import TestTrustDomain

from .rig import CLIENT_ID, Browser, Stack, oauth_stack

REDIRECT = "http://127.0.0.1:47613/callback"  # a port of the client's choosing (RFC 8252)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with oauth_stack(tmp_path_factory.mktemp("sdk"), TestTrustDomain("support.example")) as s:
        yield s


class Storage:
    """Token storage holding the pre-registered client (no dynamic registration)."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client = OAuthClientInformationFull(
            client_id=CLIENT_ID, redirect_uris=[REDIRECT], token_endpoint_auth_method="none"
        )

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


def provider(stack: Stack, seen: dict[str, Any]) -> OAuthClientProvider:
    browser = Browser(stack)

    async def redirect_handler(url: str) -> None:
        seen.setdefault("authorize_urls", []).append(url)
        seen["back"] = await anyio.to_thread.run_sync(browser.authorize, url, REDIRECT)

    async def callback_handler() -> AuthorizationCodeResult:
        back = seen["back"]
        return AuthorizationCodeResult(code=back["code"], state=back.get("state"), iss=back.get("iss"))

    return OAuthClientProvider(
        server_url=stack.gateway_url,
        client_metadata=OAuthClientMetadata(
            client_name="sdk test client", redirect_uris=[REDIRECT], token_endpoint_auth_method="none"
        ),
        storage=Storage(),
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )


def test_sdk_oauth_client_gets_a_task_through_consent_and_loses_it_on_close(stack: Stack) -> None:
    """Stock SDK OAuth client: consent opens a task; policy decides calls; closing it refuses the next."""
    seen: dict[str, Any] = {}

    async def go() -> dict[str, Any]:
        out: dict[str, Any] = {}
        auth = provider(stack, seen)
        async with (
            httpx2.AsyncClient(auth=auth, timeout=30) as http,
            streamable_http_client(stack.gateway_url, http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            out["listed"] = sorted(t.name for t in (await session.list_tools()).tools)
            now = await session.call_tool("get_current_time", {"timezone": "Europe/Paris"})
            out["now_error"], out["now_text"] = now.is_error, now.content[0].text  # type: ignore[union-attr]
            convert = await session.call_tool(
                "convert_time", {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Europe/Paris"}
            )
            out["convert_error"], out["convert_meta"] = convert.is_error, dict(convert.meta or {})
            out["token"] = auth.context.current_tokens.access_token if auth.context.current_tokens else None
        return out

    with capture_events() as events:
        out = anyio.run(go)
    assert len(seen["authorize_urls"]) == 1
    assert "code_challenge_method=S256" in seen["authorize_urls"][0]
    assert seen["back"]["iss"] == stack.issuer  # RFC 9207
    assert out["listed"] == ["get_current_time"]  # convert_time: no permit for OAuth clients
    assert out["now_error"] is False and "Europe/Paris" in out["now_text"]
    assert out["convert_error"] is True
    assert out["convert_meta"]["tether"]["code"] == "policy_forbid"

    opened = [e for e in events if e.type == "task.opened"]
    assert len(opened) == 1
    task_id = opened[0].task_id
    task, _ = stack.rt.broker.get_task(task_id)
    assert task.agent.startswith(f"spiffe://{stack.rt.settings.trust_domain}/oauth-client/")
    assert task.attestation == "oauth-client" and task.agent_attrs["oauth_client_id"] == CLIENT_ID
    assert task.delegator is not None and task.delegator.subject == "oidc:alice"
    assert task.expires_at - task.created_at <= 1800  # capped by oauth.max_lifetime_seconds

    stack.rt.broker.close_task(task_id, by="operator")
    refused = httpx2.post(
        stack.gateway_url,
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={
            "authorization": f"Bearer {out['token']}",
            "accept": "application/json, text/event-stream",
            "mcp-protocol-version": "2025-06-18",
        },
    )
    assert refused.status_code == 401
    challenge = refused.headers["www-authenticate"]
    assert 'error="invalid_token"' in challenge and "resource_metadata=" in challenge
