"""The broker as an OAuth 2.1 authorization server, and MCP gateways as protected resources.

Pure core (no web framework): :mod:`~tether.oauth.pkce`, :mod:`~tether.oauth.uris`
(redirect-URI matching, SSRF address checks), :mod:`~tether.oauth.metadata` (RFC 8414
and RFC 9728 documents, ``WWW-Authenticate``), :mod:`~tether.oauth.errors`,
:mod:`~tether.oauth.clients` (pre-registered clients and Client ID Metadata Documents),
:mod:`~tether.oauth.grants` (consent → task, codes, token exchange). The Starlette edge is
:mod:`~tether.oauth.server` (endpoints) and :mod:`~tether.oauth.consent` (the page), wired
by :mod:`~tether.oauth.wiring`. See docs/oauth.md.
"""
