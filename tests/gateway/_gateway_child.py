"""A gateway process for the kill -9 test: the HTTP gateway with an in-process broker.

Run as ``python _gateway_child.py STATE_DIR STORE_URL PORT UPSTREAM``; serves until killed.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import uvicorn

from tether.config import load_settings
from tether.gateway.authorizer import LocalAuthorizer
from tether.gateway.http import HttpGateway
from tether.gateway.routes import parse_routes
from tether.runtime import Runtime
from tether.server.http_protocol import uvicorn_options

ROUTES = """
[[routes]]
prefix = "/tickets"
upstream = "{up}"
service = "tickets"
  [[routes.rules]]
  method = "GET"
  path = "/queue"
  action = "http:read"
  resource = "tickets.queue"
"""


def main() -> None:
    state, store, port, upstream = sys.argv[1:5]
    overrides = {"environment": "prod", "store": store, "identity": {"dpop": "optional"}}
    rt = Runtime.start(load_settings(Path(state), environ={}, overrides=overrides))
    table = parse_routes(tomllib.loads(ROUTES.format(up=upstream)), "routes.toml")
    app = HttpGateway(table, LocalAuthorizer(rt))
    uvicorn.run(
        app, host="127.0.0.1", port=int(port), log_level="warning", access_log=False, **uvicorn_options(16384)
    )


if __name__ == "__main__":
    main()
