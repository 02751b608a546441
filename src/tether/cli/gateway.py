"""`tether gateway http` and `tether gateway mcp`: run an enforcement point.

Both ask a running broker over HTTP (``--broker``), authenticating as an enforcement
point with a JWT-SVID (``--svid-file``, re-read on every call so a rotating file works)
whose SPIFFE ID is listed in the broker's ``[gateway] enforcers``. To run the HTTP
gateway inside the broker's own process instead, set ``[gateway] http_routes`` in
``tether.toml`` (see docs/gateways.md).
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import click

from tether.cli._common import console, err_console, run
from tether.errors import InvalidRequest, Unauthenticated


def svid_source(svid_file: Path | None) -> Callable[[], str]:
    """The gateway's JWT-SVID: from a file (re-read each time) or ``TETHER_GATEWAY_SVID``."""

    def read() -> str:
        if svid_file is not None:
            try:
                return svid_file.read_text().strip()
            except OSError as exc:
                raise Unauthenticated(
                    f"cannot read the gateway SVID `{svid_file}`: {exc.strerror}",
                    code="enforcer_unauthenticated",
                ) from exc
        value = os.environ.get("TETHER_GATEWAY_SVID", "").strip()
        if not value:
            raise Unauthenticated(
                "give the gateway a JWT-SVID with `--svid-file` or TETHER_GATEWAY_SVID",
                code="enforcer_unauthenticated",
            )
        return value

    return read


def _raise(exc: Exception) -> None:
    raise exc


broker_option = click.option(
    "--broker",
    envvar="TETHER_BROKER_URL",
    default="http://127.0.0.1:8421",
    show_default=True,
    help="The broker's URL.",
)
svid_option = click.option(
    "--svid-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="TETHER_GATEWAY_SVID_FILE",
    help="File holding this gateway's JWT-SVID (else TETHER_GATEWAY_SVID).",
)


@click.group()
def gateway() -> None:
    """Enforcement points: proxies that authorize every call with the broker."""


@gateway.command("http")
@click.option(
    "--config",
    "config",
    required=True,
    help="The routes file (routes.toml).",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option("--listen", help="HOST:PORT; overrides `gateway.listen` in the routes file.")
@broker_option
@svid_option
def http(config: Path, listen: str | None, broker: str, svid_file: Path | None) -> None:
    """Run the HTTP gateway: a reverse proxy over the routes in `--config`.

    Agents send their task token as `Authorization: Bearer …`; allowed requests go to the
    upstream with the connector's credential instead, denied ones get a JSON 403.
    """
    import uvicorn

    from tether.gateway.authorizer import RemoteAuthorizer
    from tether.gateway.http import HttpGateway
    from tether.gateway.routes import load_routes

    table = run(lambda: load_routes(config))
    host, _, port = (listen or table.options.listen).rpartition(":")
    if not port.isdigit():
        run(lambda: _raise(InvalidRequest("`--listen` must be HOST:PORT", code="invalid_listen")))
    authorizer = run(lambda: RemoteAuthorizer(broker, svid_source(svid_file)))
    app = HttpGateway(table, authorizer)
    console.print(
        f"[green]✓[/] http gateway on [bold]http://{host}:{port}[/] → broker {broker} "
        f"({len(table.routes)} routes from {config})"
    )
    uvicorn.run(
        app,
        host=host.strip("[]"),
        port=int(port),
        log_level="warning",
        access_log=False,
        server_header=False,
        date_header=False,
    )


@gateway.command("mcp")
@click.option(
    "--server",
    "server",
    required=True,
    help='The catalog service of this MCP server: tools are `Tool::"<server>.<tool>"`.',
)
@click.option("--upstream-cmd", help="Command that starts the upstream MCP server (stdio).")
@click.option("--upstream-url", help="Streamable HTTP URL of the upstream MCP server.")
@click.option(
    "--transport",
    type=click.Choice(["stdio", "http"]),
    default="stdio",
    show_default=True,
    help="How agents reach this gateway.",
)
@click.option(
    "--listen", default="127.0.0.1:8490", show_default=True, help="HOST:PORT for `--transport http`."
)
@click.option(
    "--task-token",
    envvar="TETHER_TASK_TOKEN",
    help="The agent's task token (stdio only; over HTTP each request carries its own).",
)
@click.option("--record-arguments", is_flag=True, help="Put call arguments (masked) in the audit log.")
@click.option("--call-timeout", type=float, default=60.0, show_default=True, help="Seconds per tool call.")
@broker_option
@svid_option
def mcp(
    server: str,
    upstream_cmd: str | None,
    upstream_url: str | None,
    transport: str,
    listen: str,
    task_token: str | None,
    record_arguments: bool,
    call_timeout: float,
    broker: str,
    svid_file: Path | None,
) -> None:
    """Run the MCP gateway in front of one MCP server.

    Example (stdio both ways, as an MCP client config would launch it):

      TETHER_TASK_TOKEN=… tether gateway mcp --server time --upstream-cmd "uvx mcp-server-time"
    """
    import anyio

    from tether.gateway.authorizer import RemoteAuthorizer
    from tether.gateway.mcp import McpGateway, Upstream

    if transport == "stdio" and not task_token:
        run(
            lambda: _raise(
                Unauthenticated(
                    "over stdio the gateway needs the task token: `--task-token` or TETHER_TASK_TOKEN",
                    code="missing_token",
                )
            )
        )
    upstream = run(lambda: Upstream(command=shlex.split(upstream_cmd or ""), url=upstream_url or ""))
    authorizer = run(lambda: RemoteAuthorizer(broker, svid_source(svid_file)))
    gw = McpGateway(
        server,
        authorizer,
        task_token=task_token if transport == "stdio" else None,
        record_arguments=record_arguments,
        call_timeout=call_timeout,
    )

    async def main() -> None:
        async with gw.connect(upstream):
            if transport == "stdio":
                from mcp.server.stdio import stdio_server

                app = gw.server()
                async with stdio_server() as (read, write):
                    await app.run(read, write, app.create_initialization_options())
            else:
                import uvicorn

                host, _, port = listen.rpartition(":")
                err_console.print(f"[green]✓[/] mcp gateway for `{server}` on http://{listen}/mcp")
                config = uvicorn.Config(
                    gw.http_app(host=host), host=host, port=int(port), log_level="warning"
                )
                await uvicorn.Server(config).serve()
        await authorizer.aclose()

    try:
        anyio.run(main)
    except KeyboardInterrupt:
        sys.exit(0)


def register(main: click.Group) -> None:
    main.add_command(gateway)
