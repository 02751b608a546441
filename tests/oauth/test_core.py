"""The pure core of the OAuth front door: PKCE, redirect-URI matching, SSRF address checks,
metadata documents, scopes, Client ID Metadata Document checks, codes."""

from __future__ import annotations

import pytest

from tether.config_oauth import OAuthSettings
from tether.errors import ConfigError
from tether.oauth import pkce
from tether.oauth.cimd import cache_ttl
from tether.oauth.errors import OAuthError
from tether.oauth.grants import CodeGrant, Codes, ReplayedCode
from tether.oauth.metadata import (
    authorization_server_metadata,
    client_document,
    issuer_for,
    parse_scope,
    prm_url,
    www_authenticate,
)
from tether.oauth.uris import address_allowed, redirect_uri_matches, valid_cimd_url

VERIFIER = "v" * 43
CIMD = "https://client.example/oauth/client.json"


def test_pkce_s256_round_trip_and_mismatch():
    """RFC 7636: the verifier whose SHA-256 is the challenge passes; another one is invalid_grant."""
    challenge = pkce.check_challenge(pkce.s256(VERIFIER), "S256")
    pkce.verify(VERIFIER, challenge)
    with pytest.raises(OAuthError) as bad:
        pkce.verify("w" * 43, challenge)
    assert bad.value.error == "invalid_grant"


@pytest.mark.parametrize(
    ("challenge", "method"), [(None, None), ("x" * 43, "plain"), ("x" * 43, None), ("short", "S256")]
)
def test_missing_or_plain_pkce_is_invalid_request(challenge, method):
    """OAuth 2.1: PKCE is required and only S256 is accepted."""
    with pytest.raises(OAuthError) as bad:
        pkce.check_challenge(challenge, method)
    assert bad.value.error == "invalid_request"


def test_short_verifier_is_refused():
    """RFC 7636 §4.1: a verifier under 43 characters is malformed."""
    with pytest.raises(OAuthError):
        pkce.verify("abc", pkce.s256("abc"))


@pytest.mark.parametrize(
    ("registered", "presented", "ok"),
    [
        ("https://app.example/cb", "https://app.example/cb", True),
        ("https://app.example/cb", "https://app.example/cb/", False),
        ("https://app.example/cb", "https://app.example/cb?x=1", False),
        ("https://app.example/cb", "https://APP.example/cb", False),
        ("http://127.0.0.1/callback", "http://127.0.0.1:51234/callback", True),  # RFC 8252 §7.3
        ("http://[::1]/callback", "http://[::1]:8080/callback", True),
        ("http://127.0.0.1/callback", "http://127.0.0.1:51234/other", False),
        ("http://127.0.0.1/callback", "http://evil@127.0.0.1:5/callback", False),
        ("http://localhost/callback", "http://localhost:5/callback", False),
        ("https://app.example:443/cb", "https://app.example:444/cb", False),
    ],
)
def test_redirect_uri_matching_is_exact_but_loopback_ports(registered, presented, ok):
    """Exact string match; only a loopback IP literal's port may differ."""
    assert redirect_uri_matches(registered, presented) is ok


@pytest.mark.parametrize(
    ("address", "ok"),
    [
        ("93.184.216.34", True),
        ("2606:2800:220:1:248:1893:25c8:1946", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # CGNAT
        ("0.0.0.0", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:10.0.0.1", False),  # an IPv4-mapped private address
        ("224.0.0.1", False),
        ("not-an-ip", False),
    ],
)
def test_cimd_fetch_refuses_private_addresses(address, ok):
    """SSRF: only global unicast addresses may be fetched."""
    assert address_allowed(address) is ok


def test_private_addresses_only_when_configured_for_tests():
    """`oauth.cimd_allow_private` opens loopback for test rigs (never multicast)."""
    assert address_allowed("127.0.0.1", allow_private=True)
    assert not address_allowed("224.0.0.1", allow_private=True)


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        (CIMD, True),
        ("http://client.example/c.json", False),
        ("https://client.example/", False),
        ("https://client.example", False),
        ("https://client.example/a/../c.json", False),
        ("https://u:p@client.example/c.json", False),
        ("https://client.example/c.json#frag", False),
    ],
)
def test_cimd_urls_are_https_with_a_path(url, ok):
    """A URL client_id is https, has a path, no dot segments, credentials or fragment."""
    assert valid_cimd_url(url) is ok


@pytest.mark.parametrize(
    ("header", "ttl"),
    [
        (None, 300.0),
        ("max-age=60", 60.0),
        ("public, max-age=999999", 86400.0),
        ("no-store", 0.0),
        ("no-cache", 0.0),
    ],
)
def test_cimd_cache_follows_cache_control(header, ttl):
    """Documents are cached by max-age (capped), never with no-store/no-cache."""
    assert cache_ttl(header) == ttl


def test_client_document_must_name_itself_and_be_public():
    """A document for another client_id, without redirect URIs, or with a secret is invalid_client."""
    good = {"client_id": CIMD, "client_name": "Editor", "redirect_uris": ["http://127.0.0.1/cb"]}
    assert client_document(good, CIMD) == ("Editor", ("http://127.0.0.1/cb",))
    for bad in (
        {**good, "client_id": "https://other.example/c.json"},
        {**good, "redirect_uris": []},
        {**good, "token_endpoint_auth_method": "client_secret_basic"},
        {**good, "redirect_uris": ["http://evil.example/cb"]},
        ["not", "an", "object"],
    ):
        with pytest.raises(OAuthError) as exc:
            client_document(bad, CIMD)
        assert exc.value.error == "invalid_client"


def test_scopes_are_grants_and_anything_else_is_invalid_scope():
    """`action@resource` tokens parse; junk is invalid_scope."""
    assert parse_scope("tool:call@time  tool:call@time.now") == (
        ("tool:call", "time"),
        ("tool:call", "time.now"),
    )
    for junk in ("admin", "tool:call@", "tool:call@../x", "a@b@c"):
        with pytest.raises(OAuthError) as exc:
            parse_scope(junk)
        assert exc.value.error == "invalid_scope"


def test_metadata_documents():
    """RFC 8414 metadata says S256 only, iss parameter supported; RFC 9728 URL inserts the path."""
    issuer = issuer_for("http://127.0.0.1:8421")
    assert issuer == "http://127.0.0.1:8421/"
    doc = authorization_server_metadata(issuer, cimd=True, scopes=["tool:call@time"])
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["authorization_response_iss_parameter_supported"] is True
    assert doc["token_endpoint"] == "http://127.0.0.1:8421/oauth/token"
    assert (
        prm_url("https://mcp.example/mcp") == "https://mcp.example/.well-known/oauth-protected-resource/mcp"
    )


def test_www_authenticate_quotes_its_values():
    """A description with quotes cannot break out of its parameter."""
    header = www_authenticate("https://m/.well-known/x", error="invalid_token", description='a"b\\c')
    assert (
        header
        == 'Bearer error="invalid_token", error_description="a\\"b\\\\c", resource_metadata="https://m/.well-known/x"'
    )


def grant() -> CodeGrant:
    return CodeGrant("tsk_1", "client", "http://127.0.0.1:5/cb", pkce.s256(VERIFIER), "https://r/mcp", 0)


def test_code_is_single_use_and_replay_is_flagged():
    """A code redeems once; the second time it is a ReplayedCode naming the task to revoke."""
    codes = Codes(60)
    code = codes.issue(grant())
    args = {
        "client_id": "client",
        "redirect_uri": "http://127.0.0.1:5/cb",
        "verifier": VERIFIER,
        "resource": None,
    }
    assert codes.redeem(code, **args).task_id == "tsk_1"
    with pytest.raises(ReplayedCode) as again:
        codes.redeem(code, **args)
    assert again.value.error == "invalid_grant" and again.value.grant.task_id == "tsk_1"


def test_expired_code_is_invalid_grant():
    """A code past `oauth.code_ttl_seconds` is unknown."""
    now = [1000.0]
    codes = Codes(60, clock=lambda: now[0])
    code = codes.issue(grant())
    now[0] += 61
    with pytest.raises(OAuthError) as exc:
        codes.redeem(
            code, client_id="client", redirect_uri="http://127.0.0.1:5/cb", verifier=VERIFIER, resource=None
        )
    assert exc.value.error == "invalid_grant" and not isinstance(exc.value, ReplayedCode)


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("client_id", "other", "invalid_grant"),
        ("redirect_uri", "http://127.0.0.1:6/cb", "invalid_grant"),
        ("verifier", "x" * 43, "invalid_grant"),
        ("resource", "https://other/mcp", "invalid_target"),
    ],
)
def test_code_is_bound_to_client_redirect_verifier_and_resource(field, value, error):
    """Each binding of a code is checked at redemption."""
    codes = Codes(60)
    code = codes.issue(grant())
    args = {
        "client_id": "client",
        "redirect_uri": "http://127.0.0.1:5/cb",
        "verifier": VERIFIER,
        "resource": None,
    }
    with pytest.raises(OAuthError) as exc:
        codes.redeem(code, **{**args, field: value})
    assert exc.value.error == error


def test_config_names_the_bad_field():
    """A bad `[[oauth.clients]]` entry names its field."""
    with pytest.raises(ConfigError) as exc:
        OAuthSettings(
            enabled=True,
            clients=[{"client_id": "c", "redirect_uris": ["http://evil.example/cb"]}],
            resources=[{"uri": "https://m.example/mcp", "server": "time"}],
        )
    assert exc.value.details["field"] == "oauth.clients[0].redirect_uris[0]"
    with pytest.raises(ConfigError) as exc:
        OAuthSettings(enabled=True)
    assert exc.value.details["field"] == "oauth.resources"


def test_oauth_refuses_several_workers(tmp_path):
    """Codes live in one process: `tether serve --workers 2` with OAuth refuses to start."""
    from dataclasses import replace

    from tether.server.workers import serve_workers
    from tether.testing import make_settings

    base = make_settings(tmp_path / "state")
    oauth = OAuthSettings(enabled=True, resources=[{"uri": "https://m.example/mcp", "server": "time"}])
    with pytest.raises(ConfigError) as exc:
        serve_workers(replace(base, oauth=oauth), 2)
    assert exc.value.details["field"] == "oauth.enabled"
