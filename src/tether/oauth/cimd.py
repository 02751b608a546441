"""Fetching Client ID Metadata Documents without becoming an SSRF proxy.

A ``client_id`` that is an https URL names a JSON document the client publishes. Fetching
it means connecting wherever a stranger's URL points, so each fetch:

* resolves the host once and connects to a checked address only (no loopback, private,
  link-local or reserved address unless ``oauth.cimd_allow_private`` is set for a test
  rig), pinning the connection to that address so a second DNS answer cannot swap in
  another (rebinding); TLS is still verified against the host name;
* follows no redirect, accepts only ``200`` with a JSON content type;
* stops reading past ``oauth.cimd_max_bytes`` and past ``oauth.cimd_timeout_seconds`` of
  wall time in total (a slow drip is as refused as a huge body);
* is cached by the response's ``Cache-Control`` (``max-age``, capped at a day;
  ``no-store``/``no-cache`` are not kept; no header: five minutes).

Every refusal is an ``invalid_client`` :class:`~tether.oauth.errors.OAuthError`.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from tether.oauth.errors import OAuthError
from tether.oauth.uris import address_allowed, valid_cimd_url

DEFAULT_TTL = 300.0
MAX_TTL = 86400.0
Resolver = Callable[[str, int], list[str]]


def _resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def cache_ttl(cache_control: str | None) -> float:
    """Seconds a document may be reused for, from its ``Cache-Control`` header."""
    if not cache_control:
        return DEFAULT_TTL
    directives = [d.strip().lower() for d in cache_control.split(",")]
    if any(d in ("no-store", "no-cache", "private") or d.startswith("no-cache=") for d in directives):
        return 0.0
    for d in directives:
        m = re.fullmatch(r"max-age=(\d{1,10})", d)
        if m:
            return min(float(m.group(1)), MAX_TTL)
    return DEFAULT_TTL


class CimdFetcher:
    def __init__(
        self,
        *,
        max_bytes: int,
        timeout: float,
        allow_private: bool = False,
        ca_file: str = "",
        resolver: Resolver = _resolve,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_bytes, self.timeout, self.allow_private = max_bytes, timeout, allow_private
        self._resolver, self._clock = resolver, clock
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
        self._client = httpx.Client(verify=verify, follow_redirects=False, trust_env=False)
        self._cache: dict[str, tuple[float, Any]] = {}
        self._lock = threading.Lock()
        self.fetches = 0  # network fetches made (tests read it to see the cache work)

    def close(self) -> None:
        self._client.close()

    def get(self, url: str) -> Any:
        """The parsed JSON document at ``url`` (from the cache while fresh)."""
        if not valid_cimd_url(url):
            raise OAuthError(
                "invalid_client", "a URL `client_id` must be https with a path", redirectable=False
            )
        now = self._clock()
        with self._lock:
            hit = self._cache.get(url)
            if hit is not None and hit[0] > now:
                return hit[1]
        doc, ttl = self._fetch(url)
        if ttl > 0:
            with self._lock:
                if len(self._cache) > 1000:  # bounded: strangers choose the keys
                    self._cache.clear()
                self._cache[url] = (now + ttl, doc)
        return doc

    def _bad(self, url: str, why: str) -> OAuthError:
        return OAuthError(
            "invalid_client", f"the client metadata document `{url[:200]}` {why}", redirectable=False
        )

    def _fetch(self, url: str) -> tuple[Any, float]:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port or 443
        started = self._clock()
        try:
            addresses = self._resolver(host, port)
        except (OSError, UnicodeError):
            raise self._bad(url, "names a host that does not resolve") from None
        if not addresses or not all(address_allowed(a, allow_private=self.allow_private) for a in addresses):
            # Every answer must be public: otherwise a name with one public and one private
            # address would reach the private one on some connection.
            raise self._bad(url, "resolves to a private, loopback or reserved address")
        address = addresses[0]
        literal = f"[{address}]" if ":" in address else address
        pinned = parts._replace(netloc=f"{literal}:{port}").geturl()
        self.fetches += 1
        chunks, size = [], 0
        try:
            with self._client.stream(
                "GET",
                pinned,
                headers={"host": parts.netloc, "accept": "application/json"},
                extensions={"sni_hostname": host},
                timeout=httpx.Timeout(self.timeout),
            ) as resp:
                if resp.status_code != 200:
                    raise self._bad(url, f"answered HTTP {resp.status_code}")
                ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
                if ctype != "application/json" and not ctype.endswith("+json"):
                    raise self._bad(url, "is not served as application/json")
                declared = resp.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > self.max_bytes:
                    raise self._bad(url, f"is larger than {self.max_bytes} bytes")
                for chunk in resp.iter_bytes():
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise self._bad(url, f"is larger than {self.max_bytes} bytes")
                    if self._clock() - started > self.timeout:
                        raise self._bad(url, f"took longer than {self.timeout} s")
                    chunks.append(chunk)
                ttl = cache_ttl(resp.headers.get("cache-control"))
        except httpx.TimeoutException:
            raise self._bad(url, f"took longer than {self.timeout} s") from None
        except httpx.HTTPError as exc:
            raise self._bad(url, f"could not be fetched ({type(exc).__name__})") from None
        if self._clock() - started > self.timeout:
            raise self._bad(url, f"took longer than {self.timeout} s")
        try:
            return json.loads(b"".join(chunks)), ttl
        except ValueError:
            raise self._bad(url, "is not valid JSON") from None
