"""The MCP gateway as a protected resource: RFC 9728 metadata, 401 challenges, audience
binding (RFC 8707), 403 insufficient_scope — against the real gateway and broker."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tether.audit.chain import capture_events
from tether.broker import OpenTaskRequest
from tether.model import Grant
from tether.testing import TestTrustDomain

from .rig import Stack, oauth_stack

DOMAIN = TestTrustDomain("support.example")
LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
MCP_HEADERS = {"accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-06-18"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with oauth_stack(tmp_path_factory.mktemp("door"), DOMAIN) as s:
        yield s


def task_token(stack: Stack, scope: tuple[Grant, ...], audience: str | None) -> str:
    """A task of an attested agent, its token minted for ``audience`` (None: the broker)."""
    rt = stack.rt
    workload = rt.identity.authenticate(DOMAIN.svid(DOMAIN.spiffe_id("agent"), rt.settings.broker_audience))
    opened = rt.broker.open_task(workload, OpenTaskRequest("support.triage", "t", scope, 600))
    return rt.broker.tokens.mint(opened.task, now=rt.broker.clock(), audience=audience)


def call(stack: Stack, token: str | None) -> httpx.Response:
    headers = dict(MCP_HEADERS)
    if token:
        headers["authorization"] = f"Bearer {token}"
    return httpx.post(stack.gateway_url, json=LIST, headers=headers)


def test_protected_resource_metadata_names_the_broker(stack: Stack):
    """RFC 9728: the metadata (at the path-inserted and the root URL) names resource and issuer."""
    origin = stack.gateway_url.rsplit("/", 1)[0]
    for url in (
        origin + "/.well-known/oauth-protected-resource/mcp",
        origin + "/.well-known/oauth-protected-resource",
    ):
        doc = httpx.get(url).json()
        assert doc["resource"] == stack.gateway_url
        assert doc["authorization_servers"] == [stack.issuer]
        assert doc["scopes_supported"] == ["tool:call@time"]
    meta = httpx.get(stack.broker_url + "/.well-known/oauth-authorization-server").json()
    assert meta["issuer"] == stack.issuer


def test_no_token_is_a_401_with_resource_metadata(stack: Stack):
    """RFC 9728 §5.1: the challenge points at the metadata and names the scope."""
    r = call(stack, None)
    assert r.status_code == 401
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert (
        f'resource_metadata="{stack.gateway_url.rsplit("/", 1)[0]}/.well-known/oauth-protected-resource/mcp"'
        in challenge
    )
    assert 'scope="tool:call@time"' in challenge


def test_token_for_another_resource_is_invalid_token(stack: Stack):
    """RFC 8707: a token minted for another resource is refused here, and audited."""
    token = task_token(stack, (Grant("tool:call", "time"),), "http://127.0.0.1:1/mcp")
    with capture_events() as events:
        r = call(stack, token)
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
    assert r.json()["code"] == "bad_audience"
    assert any(e.type == "decision" and e.payload.get("code") == "bad_audience" for e in events)


def test_broker_audience_task_token_is_refused_by_the_oauth_gateway(stack: Stack):
    """A plain task token (audience: the broker) is not an access token for this resource."""
    r = call(stack, task_token(stack, (Grant("tool:call", "time"),), None))
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]


def test_token_for_this_resource_passes(stack: Stack):
    """The audience is exactly this gateway's resource URI: the request reaches MCP."""
    r = call(stack, task_token(stack, (Grant("tool:call", "time"),), stack.gateway_url))
    assert r.status_code == 200, r.text


def test_task_without_a_grant_here_is_insufficient_scope(stack: Stack):
    """RFC 6750 §3.1: a good token whose task holds nothing on this server → 403 insufficient_scope."""
    r = call(stack, task_token(stack, (Grant("tool:call", "tickets.comment"),), stack.gateway_url))
    assert r.status_code == 403
    challenge = r.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge and 'scope="tool:call@time"' in challenge


def test_forged_token_is_invalid_token(stack: Stack):
    """A token with a broken signature is a 401 invalid_token, never a 5xx."""
    token = task_token(stack, (Grant("tool:call", "time"),), stack.gateway_url)
    head, body, sig = token.split(".")
    r = call(stack, f"{head}.{body}.{sig[:-4]}AAAA")
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]


def test_iss_mismatch_is_refused_by_a_stock_client(stack: Stack):
    """RFC 9207: our metadata advertises `iss`, so a client refuses a response with another or none."""
    from mcp.client.auth.exceptions import OAuthFlowError
    from mcp.client.auth.utils import validate_authorization_response_iss
    from mcp.shared.auth import OAuthMetadata

    meta = OAuthMetadata.model_validate(
        httpx.get(stack.broker_url + "/.well-known/oauth-authorization-server").json()
    )
    validate_authorization_response_iss(stack.issuer, meta)  # what our redirects carry
    for forged in ("https://evil.example/", None):
        with pytest.raises(OAuthFlowError):
            validate_authorization_response_iss(forged, meta)
