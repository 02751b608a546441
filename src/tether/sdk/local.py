"""Where the broker of a local state directory listens, read the way the broker reads it.

``Client.local()`` needs three settings of the broker next to it: ``listen``, the
broker's audience and the Workload API socket. The client installs without the broker,
so it reads them here from ``<state>/tether.toml`` and ``TETHER_*`` variables with the
broker's precedence (defaults < file < environment) rather than importing the broker's
configuration; a test checks both readings agree.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tether.errors import ConfigError, ErrorCode

__all__ = ["WORKLOAD_SOCKET", "local_broker"]

CONFIG_FILE = "tether.toml"
#: The Workload API socket in a state directory, unless ``identity.workload_socket`` says otherwise.
WORKLOAD_SOCKET = "workload.sock"
_DEFAULT_LISTEN = "127.0.0.1:8421"
_DEFAULT_TRUST_DOMAIN = "tether.local"


def _setting(raw: Mapping[str, Any], env: Mapping[str, str], *path: str) -> str | None:
    value = env.get("TETHER_" + "__".join(p.upper() for p in path))
    if value is not None:
        return value
    node: Any = raw
    for part in path:
        node = node.get(part) if isinstance(node, Mapping) else None
    if node is not None and not isinstance(node, str):
        raise ConfigError(
            f"`{'.'.join(path)}` must be a string", code=ErrorCode.CONFIG_INVALID, field=".".join(path)
        )
    return node


def local_broker(
    state_dir: str | Path | None = None, environ: Mapping[str, str] | None = None
) -> tuple[str, str, Path]:
    """(URL, audience, Workload API socket) of the broker configured in ``state_dir``."""
    env = os.environ if environ is None else environ
    state = Path(state_dir or env.get("TETHER_STATE_DIR") or ".tether").absolute()
    raw: dict[str, Any] = {}
    cfg = state / CONFIG_FILE
    if cfg.exists():
        try:
            raw = tomllib.loads(cfg.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{cfg}: {exc}", code=ErrorCode.CONFIG_INVALID) from exc
    listen = _setting(raw, env, "listen") or _DEFAULT_LISTEN
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(
            f"`listen` must be HOST:PORT, not `{listen}`", code=ErrorCode.INVALID_LISTEN, field="listen"
        )
    host = host.strip("[]")
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - a wildcard listen is reached on loopback
        host = "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    trust_domain = _setting(raw, env, "trust_domain") or _DEFAULT_TRUST_DOMAIN
    audience = _setting(raw, env, "audience") or f"spiffe://{trust_domain}/tether"
    socket = _setting(raw, env, "identity", "workload_socket")
    return f"http://{host}:{port}", audience, state / (socket or WORKLOAD_SOCKET)
