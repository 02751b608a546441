"""The client reads a local broker's address the way the broker reads its own settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.config import load_settings
from tether.runtime import init_state_dir
from tether.sdk.local import local_broker


def _broker_view(state: Path, env: dict[str, str]) -> tuple[str, str, Path]:
    s = load_settings(state, environ=env)
    host, port = s.listen_host_port
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    host = f"[{host}]" if ":" in host else host
    return (
        f"http://{host}:{port}",
        s.broker_audience,
        s.state_dir / (s.identity.workload_socket or "workload.sock"),
    )


@pytest.mark.parametrize(
    "extra, env",
    [
        ("", {}),
        ('listen = "0.0.0.0:9000"\n', {}),
        ("", {"TETHER_LISTEN": "[::1]:9100", "TETHER_TRUST_DOMAIN": "agents.example"}),
        ('audience = "spiffe://x.example/broker"\n', {"TETHER_IDENTITY__WORKLOAD_SOCKET": "/run/wl.sock"}),
    ],
)
def test_client_and_broker_agree_on_url_audience_and_socket(tmp_path: Path, extra: str, env: dict[str, str]):
    """File and TETHER_* overrides give the client the URL, audience and socket the broker uses."""
    state = tmp_path / "state"
    init_state_dir(state)
    cfg = state / "tether.toml"
    text = cfg.read_text()
    listen = extra.startswith("listen")
    text = text.replace('listen = "127.0.0.1:8421"\n', extra) if listen else extra + text
    cfg.write_text(text)
    assert local_broker(state, env) == _broker_view(state, env)
