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


_CLIENT_CERT = ("none", "optional", "required")


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """``[tls]``: HTTPS on the API port (``tether.server.tls``). Both files or neither."""

    #: PEM certificate chain (leaf first), relative to the state directory. Re-read on SIGHUP.
    cert_file: str = ""
    #: PEM private key of the certificate. Re-read on SIGHUP.
    key_file: str = ""
    #: PEM CA bundle that client certificates must chain to (enforcers' mTLS).
    client_ca_file: str = ""
    #: `none`, `optional` (checked when presented) or `required` (no certificate, no connection).
    client_cert: str = "none"

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise _bad(
                "tls.key_file" if self.cert_file else "tls.cert_file", "is needed with the other TLS file"
            )
        if self.client_cert not in _CLIENT_CERT:
            raise _bad(
                "tls.client_cert", f"must be one of {', '.join(_CLIENT_CERT)}, got `{self.client_cert}`"
            )
        if self.client_cert != "none" and not self.client_ca_file:
            raise _bad("tls.client_ca_file", "is needed to check client certificates")
        if self.client_ca_file and not self.cert_file:
            raise _bad("tls.cert_file", "is needed: client certificates are checked over TLS only")

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """``[tracing]``: OpenTelemetry spans of the request path (``tether.tracing``)."""

    #: OTLP/HTTP traces endpoint (e.g. `http://collector:4318/v1/traces`). Empty: no tracing.
    otlp_endpoint: str = ""
    #: `service.name` of the spans; the node id is added as `service.instance.id`.
    service_name: str = "tether"
