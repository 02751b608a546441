"""URI rules: exact redirect-URI matching, resource indicators, and SSRF address checks.

* Redirect URIs match exactly, character for character (OAuth 2.1 §4.1.3), except that a
  loopback IP literal redirect (``http://127.0.0.1/…``, ``http://[::1]/…``) may carry any
  port: native apps bind an ephemeral one (RFC 8252 §7.3).
* A Client ID Metadata Document URL is https with a path, no fragment, no credentials,
  no dot segments (draft-ietf-oauth-client-id-metadata-document §3).
* An address a metadata fetch may connect to is a global unicast address; loopback,
  private, link-local, CGNAT, multicast and reserved ranges are refused (SSRF).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

_LOOPBACK_LITERALS = ("127.0.0.1", "::1")


def redirect_uri_matches(registered: str, presented: str) -> bool:
    if presented == registered:
        return True
    r, p = urlsplit(registered), urlsplit(presented)
    if r.scheme != "http" or p.scheme != "http" or r.hostname not in _LOOPBACK_LITERALS:
        return False
    try:
        p.port  # noqa: B018  (a malformed port raises)
    except ValueError:
        return False
    # Same everything but the port, and nothing odd hidden in the authority.
    return (
        p.hostname == r.hostname
        and "@" not in p.netloc
        and p.path == r.path
        and p.query == r.query
        and not p.fragment
    )


def valid_cimd_url(url: str) -> bool:
    if len(url) > 2048:
        return False
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or parts.fragment or "@" in parts.netloc:
        return False
    segments = parts.path.split("/")
    return parts.path not in ("", "/") and "." not in segments and ".." not in segments


def address_allowed(address: str, *, allow_private: bool = False) -> bool:
    """May a metadata fetch connect to this IP address?"""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
    if ip.is_multicast or ip.is_unspecified:
        return False
    if allow_private:
        return True
    return ip.is_global and not ip.is_reserved and not ip.is_link_local


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
