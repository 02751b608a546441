"""`tether gateway http` and `tether gateway mcp`: run an enforcement point.

Both ask a running broker over HTTP (``--broker``), authenticating as an enforcement
point with a JWT-SVID whose SPIFFE ID is listed in the broker's ``[gateway] enforcers``:
from the local Workload API by default (renewed before it expires), or from
``--svid-file`` (re-read on every call so a rotating file works). To run the HTTP
gateway inside the broker's own process instead, set ``[gateway] http_routes`` in
``tether.toml`` (see docs/gateways.md).

Both serve HTTPS themselves with ``--tls-cert``/``--tls-key`` (optionally checking client
certificates against ``--tls-client-ca``), reloaded on SIGHUP as the broker's are
(``tether.server.tls``, docs/tls.md). ``tether gateway http --workers N`` runs N processes
on one listening socket (``tether.server.workers.supervise``); each has its own broker
client and connection pools.
"""

from __future__ import annotations

import logging
import os
import shlex
import socket as socketlib
import sys
from collections.abc import Callable
from pathlib import Path

import click

from tether.cli._common import console, err_console, run, state_dir_option
from tether.cli._gateway_serving import (
    broker_tls,
    broker_tls_options,
    gateway_tls,
    remote_authorizer,
    serve_http,
    server_config,
    tls_options,
)
from tether.errors import InvalidRequest, Unauthenticated


def identity_source(
    svid_file: Path | None, state_dir: Path, socket: Path | None, audience: str | None, spiffe_id: str | None
) -> tuple[Callable[[], str], str, Path]:
    """The gateway's own SVID source, the broker audience and the Workload API socket.

    ``--svid-file``/``TETHER_GATEWAY_SVID`` when given; else the local Workload API of
    ``--state-dir`` (or ``--workload-socket``), renewed before expiry."""
    from tether.gateway.identity import GatewayIdentity
    from tether.sdk.client import local_broker
    from tether.sdk.svid import WorkloadApiSvid

    if socket is None or audience is None:
        _, local_audience, local_socket = local_broker(state_dir)
        audience = audience or local_audience
        socket = socket or local_socket
    if svid_file is not None or os.environ.get("TETHER_GATEWAY_SVID"):
        return svid_source(svid_file), audience, socket
    return GatewayIdentity(WorkloadApiSvid(socket, spiffe_id=spiffe_id), audience), audience, socket


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
    help="File holding this gateway's JWT-SVID (else TETHER_GATEWAY_SVID, else the Workload API).",
)


def identity_options(fn: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(
        [
            state_dir_option,
            click.option(
                "--workload-socket",
                type=click.Path(dir_okay=False, path_type=Path),
                envvar="TETHER_WORKLOAD_SOCKET",
                help="The Workload API socket (default: the one of --state-dir).",
            ),
            click.option(
                "--audience",
                envvar="TETHER_AUDIENCE",
                help="The broker's SPIFFE ID, the audience of SVIDs (default: from --state-dir).",
            ),
            click.option(
                "--enforcer-id",
                envvar="TETHER_ENFORCER_ID",
                help="This gateway's SPIFFE ID, when several registrations match it.",
            ),
        ]
    ):
        fn = option(fn)
    return fn


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
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Gateway processes sharing the listening socket (one per core).",
)
@tls_options
@broker_option
@broker_tls_options
@svid_option
@identity_options
def http(
    config: Path,
    listen: str | None,
    workers: int,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    tls_client_cert: str,
    broker: str,
    broker_ca: Path | None,
    broker_client_cert: Path | None,
    broker_client_key: Path | None,
    svid_file: Path | None,
    state_dir: Path,
    workload_socket: Path | None,
    audience: str | None,
    enforcer_id: str | None,
) -> None:
    """Run the HTTP gateway: a reverse proxy over the routes in `--config`.

    Agents send their task token as `Authorization: Bearer …`; allowed requests go to the
    upstream with the connector's credential instead, denied ones get a JSON 403.
    """
    from tether.gateway.http import HttpGateway
    from tether.gateway.routes import load_routes
    from tether.server.http_protocol import run as run_loop

    table = run(lambda: load_routes(config))
    host, _, port = (listen or table.options.listen).rpartition(":")
    if not port.isdigit():
        run(lambda: _raise(InvalidRequest("`--listen` must be HOST:PORT", code="invalid_listen")))
    host = host.strip("[]")
    tls = gateway_tls(tls_cert, tls_key, tls_client_ca, tls_client_cert)
    client = broker_tls(broker_ca, broker_client_cert, broker_client_key)

    def identity() -> Callable[[], str]:
        found: tuple[Callable[[], str], str, Path] = run(
            lambda: identity_source(svid_file, state_dir, workload_socket, audience, enforcer_id)
        )
        return found[0]

    identity()  # a wrong identity setting stops the gateway before it listens

    def serve(sock: socketlib.socket | None) -> None:
        # Built in the process that serves: an SVID cache and a broker client's
        # connections are not shared across a fork.
        authorizer, on_hup = run(lambda: remote_authorizer(broker, identity(), client))
        app = HttpGateway(table, authorizer)
        run_loop(serve_http(server_config(app, host, int(port), tls), tls, sock, on_hup))

    scheme = "https" if tls is not None else "http"
    shown = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    console.print(
        f"[green]✓[/] http gateway on [bold]{scheme}://{shown}[/] → broker {broker} "
        f"({len(table.routes)} routes from {config}" + (f", {workers} workers" if workers > 1 else "") + ")"
    )
    if workers == 1:
        serve(None)
        return
    from tether.server.workers import reserve_port, supervise, worker_socket

    sock = run(lambda: reserve_port(host, int(port)))
    raise SystemExit(supervise(workers, lambda _i: serve(worker_socket(sock)), sock))


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
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="`--transport http`: gateway processes sharing the listening socket, each with its own upstream.",
)
@click.option(
    "--task-token",
    envvar="TETHER_TASK_TOKEN",
    help="The agent's task token (stdio only; over HTTP each request carries its own).",
)
@click.option("--intent", help="stdio: open a task for this session with this intent (no token needed).")
@click.option(
    "--scope",
    "scope",
    multiple=True,
    help="stdio session task: a grant ACTION=RESOURCE (e.g. tool:call=fs); repeat for several.",
)
@click.option("--ttl", type=int, default=3600, show_default=True, help="Session task lifetime, seconds.")
@click.option("--agent-id", envvar="TETHER_SPIFFE_ID", help="The SPIFFE ID to open the session task as.")
@click.option("--record-arguments", is_flag=True, help="Put call arguments (masked) in the audit log.")
@click.option("--call-timeout", type=float, default=60.0, show_default=True, help="Seconds per tool call.")
@click.option(
    "--max-restarts",
    type=click.IntRange(0, 100),
    default=3,
    show_default=True,
    help="stdio upstream: restarts before the gateway gives up and exits non-zero.",
)
@click.option(
    "--oauth-resource",
    help="http: serve as an OAuth protected resource with this URI (as in `[[oauth.resources]]`); "
    "only access tokens minted for it pass (docs/oauth.md).",
)
@click.option(
    "--authorization-server",
    help="With --oauth-resource: the broker's OAuth issuer, named in the resource metadata.",
)
@tls_options
@broker_option
@broker_tls_options
@svid_option
@identity_options
def mcp(
    server: str,
    upstream_cmd: str | None,
    upstream_url: str | None,
    transport: str,
    listen: str,
    workers: int,
    task_token: str | None,
    intent: str | None,
    scope: tuple[str, ...],
    ttl: int,
    agent_id: str | None,
    record_arguments: bool,
    call_timeout: float,
    max_restarts: int,
    oauth_resource: str | None,
    authorization_server: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    tls_client_cert: str,
    broker: str,
    broker_ca: Path | None,
    broker_client_cert: Path | None,
    broker_client_key: Path | None,
    svid_file: Path | None,
    state_dir: Path,
    workload_socket: Path | None,
    audience: str | None,
    enforcer_id: str | None,
) -> None:
    """Run the MCP gateway in front of one MCP server.

    As a stock MCP client launches it over stdio, opening one DPoP-bound task per session
    with its identity from the local Workload API (closed when the client disconnects):

    \b
      tether gateway mcp --server fs --intent support.triage --scope tool:call=fs \\
        --upstream-cmd "npx @modelcontextprotocol/server-filesystem /data"

    Or with a task token the client already holds: TETHER_TASK_TOKEN=… tether gateway mcp …
    """
    import anyio

    from tether.gateway.mcp import McpGateway, Upstream, UpstreamGone
    from tether.gateway.oauth_resource import ProtectedResource
    from tether.gateway.session import parse_scope, session_task
    from tether.sdk.svid import WorkloadApiSvid

    session = transport == "stdio" and not task_token
    if session and not intent:
        run(
            lambda: _raise(
                Unauthenticated(
                    "over stdio give `--intent` and `--scope` (the gateway opens a task for the "
                    "session), or the task token: `--task-token` or TETHER_TASK_TOKEN",
                    code="missing_token",
                )
            )
        )
    grants = run(lambda: parse_scope(scope)) if session else []
    tls = gateway_tls(tls_cert, tls_key, tls_client_ca, tls_client_cert)
    if tls is not None and transport != "http":
        run(
            lambda: _raise(
                InvalidRequest(
                    "`--tls-cert` needs `--transport http` (over stdio there is no network)",
                    code="invalid_field",
                    field="tls_cert",
                )
            )
        )
    upstream = run(lambda: Upstream(command=shlex.split(upstream_cmd or ""), url=upstream_url or ""))
    identity, broker_audience, socket = run(
        lambda: identity_source(svid_file, state_dir, workload_socket, audience, enforcer_id)
    )
    client = broker_tls(broker_ca, broker_client_cert, broker_client_key)
    if workers > 1 and transport != "http":
        run(
            lambda: _raise(
                InvalidRequest(
                    "`--workers` needs `--transport http` (over stdio one client has one gateway)",
                    code="invalid_field",
                    field="workers",
                )
            )
        )
    resource = None
    if oauth_resource:
        if transport != "http" or not authorization_server:
            run(
                lambda: _raise(
                    InvalidRequest(
                        "`--oauth-resource` needs `--transport http` and `--authorization-server`",
                        code="invalid_field",
                        field="oauth_resource",
                    )
                )
            )
        resource = ProtectedResource(oauth_resource, (str(authorization_server),), server)
    # One context for the decisions and the session task's open and close: a broker that
    # requires client certificates answers both, and SIGHUP re-reads the certificate once.
    broker_ctx = run(client.context) if client is not None else None
    authorizer, on_hup = run(lambda: remote_authorizer(broker, identity, client, broker_ctx))
    gw = McpGateway(
        server,
        authorizer,
        task_token=task_token if transport == "stdio" else None,
        record_arguments=record_arguments,
        call_timeout=call_timeout,
        max_restarts=max_restarts,
        resource=resource,
    )
    host, _, port = listen.rpartition(":")

    async def serve_stdio() -> None:
        from tether.gateway.mcp_stdio import stdio_streams

        app = gw.server()
        async with stdio_streams() as (read, write):
            await app.run(read, write, app.create_initialization_options())

    async def main(sock: socketlib.socket | None = None) -> None:
        async with gw.connect(upstream):
            if session:
                agent = WorkloadApiSvid(socket, spiffe_id=agent_id)
                async with session_task(
                    broker, broker_audience, agent, intent=str(intent), scope=grants, ttl=ttl, tls=broker_ctx
                ) as task:
                    gw.task_token, gw.session_proof = task.token, task.proof
                    await serve_stdio()
            elif transport == "stdio":
                await serve_stdio()
            else:
                if sock is None:
                    err_console.print(f"[green]✓[/] mcp gateway for `{server}` on {scheme}://{listen}/mcp")
                config = server_config(gw.http_app(host=host), host, int(port), tls)
                await serve_http(config, tls, sock, on_hup)
        await authorizer.aclose()

    scheme = "https" if tls is not None else "http"
    if workers > 1:
        # Each worker runs the whole gateway: its own upstream (a stdio server is started
        # once per worker) and broker client. Requests are stateless (each carries its
        # token), so any worker can answer any of them.
        from tether.server.workers import reserve_port, supervise, worker_socket

        sock = run(lambda: reserve_port(host.strip("[]"), int(port)))
        err_console.print(
            f"[green]✓[/] mcp gateway for `{server}` on {scheme}://{listen}/mcp with {workers} workers"
        )
        raise SystemExit(supervise(workers, lambda _i: anyio.run(main, worker_socket(sock)), sock))

    if not logging.getLogger().handlers:  # stdout is the MCP channel: logs go to stderr
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="tether: %(message)s")
    try:
        anyio.run(main)
    except KeyboardInterrupt:
        sys.exit(0)
    except BaseExceptionGroup as group:
        gone = group.subgroup(UpstreamGone)
        if gone is None:
            raise
        err_console.print(f"[red]✗[/] {gone.exceptions[0]}")
        sys.exit(4)
    except UpstreamGone as exc:
        err_console.print(f"[red]✗[/] {exc}")
        sys.exit(4)


def register(main: click.Group) -> None:
    main.add_command(gateway)
