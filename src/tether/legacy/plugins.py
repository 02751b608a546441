"""Tether's detect-secrets plugins: what the catalog knows that generic detectors do not.

detect-secrets loads this file by path (``{"name": ..., "path": "file://<this file>"}``),
so it imports nothing from tether: it must stand alone as a module.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Iterable
from re import Pattern
from typing import Any

from detect_secrets.plugins.base import BasePlugin, RegexBasedDetector

# The password of a libpq URL (`postgresql://user:pw@host/db`, SQLAlchemy's `+driver` too).
# Basic Auth catches these as well; a named kind tells the operator it is rotatable.
_PG_URL = re.compile(r"postgres(?:ql)?(?:\+\w+)?://[^:/\s@'\"]+:([^@\s/'\"]+)@")

# Query parameters that carry a credential in a URL.
_CRED_PARAM = re.compile(
    r"(?i)[?&](?:api[_-]?key|apikey|key|token|access[_-]?token|secret|password|sig|auth)=([^&#\s'\"]{8,})"
)


class PostgresUrlDetector(RegexBasedDetector):
    """A PostgreSQL connection URL with a password in it."""

    secret_type = "PostgreSQL Password"  # noqa: S105 (a kind name, not a password)

    @property
    def denylist(self) -> Iterable[Pattern[str]]:
        return (_PG_URL,)


class ServiceUrlCredentialDetector(BasePlugin):
    """A credential in the URL of a service the catalog knows (``?api_key=…`` or ``user:tok@``).

    ``hosts`` comes from the scanner's settings: the catalog services' base URLs and the
    gateway routes' upstreams.
    """

    secret_type = "Service URL Credential"  # noqa: S105 (a kind name)

    def __init__(self, hosts: list[str] | None = None, **_: Any) -> None:
        self.hosts = sorted({h.lower() for h in hosts or [] if h}, key=len, reverse=True)
        alt = "|".join(re.escape(h) for h in self.hosts) or r"(?!)"
        self._url = re.compile(rf"(?i)https?://(?:([^:/\s@]+):([^@\s/]+)@)?(?:{alt})(?::\d+)?[^\s'\"]*")

    def analyze_string(self, string: str) -> Generator[str, None, None]:
        for m in self._url.finditer(string):
            if m.group(2):
                yield m.group(2)
            for p in _CRED_PARAM.finditer(m.group(0)):
                yield p.group(1)

    def json(self) -> dict[str, Any]:
        return {"name": type(self).__name__, "hosts": self.hosts}
