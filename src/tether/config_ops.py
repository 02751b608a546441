"""``[metrics]``, ``[tracing]`` and ``[tls]`` settings: what an operator runs the broker with.

Kept apart from ``config.py`` so that file stays readable; ``Settings`` holds one of
each, built and validated by the same loader (errors name the field).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from tether.config_console import _bad, _bool, _strs


def _networks(value: Any, name: str) -> tuple[str, ...]:
    out = _strs(value, name)
    for v in out:
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise _bad(name, f"must list IP networks like `10.0.0.0/8`, got `{v}`") from None
    return out


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """``[metrics]``: Prometheus text at ``/metrics`` on the API port."""

    #: Serve ``/metrics`` at all (false: 404).
    enabled: bool = True
    #: Client addresses allowed to scrape (CIDR); everyone else gets 403 `metrics_forbidden`.
    #: Loopback only by default: counts of tasks, leases and decisions are not public.
    allow: tuple[str, ...] = ("127.0.0.1/32", "::1/128")

    def __post_init__(self) -> None:
        object.__setattr__(self, "enabled", _bool(self.enabled, "metrics.enabled"))
        object.__setattr__(self, "allow", _networks(self.allow, "metrics.allow"))

    def allows(self, host: str | None) -> bool:
        if not host:
            return False
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(addr in ipaddress.ip_network(n, strict=False) for n in self.allow)
