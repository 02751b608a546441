"""The ``tether`` command's entry point: the broker's CLI, or a clear word when it is absent.

A client-only install (``pip install tether``) has the command but not the broker's
dependencies (``tether[broker]``); instead of a traceback it says what to install.
"""

from __future__ import annotations

import sys

#: Top-level modules of the broker extra's distributions that the CLI imports.
BROKER_MODULES = frozenset(
    {
        "alembic",
        "cedarpy",
        "click",
        "detect_secrets",
        "jinja2",
        "mcp",
        "orjson",
        "psycopg",
        "rich",
        "sqlalchemy",
        "starlette",
        "uvicorn",
        "yaml",
    }
)


def main() -> None:
    try:
        from tether.cli import main as cli_main
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing not in BROKER_MODULES:
            raise
        print(
            f"tether: the `tether` command is part of the broker, and `{missing}` is not installed.\n"
            "This is a client-only install (the SDK: `from tether.sdk import Client, guard`).\n"
            "For the broker and its command line: pip install 'tether[broker]'",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    cli_main()
