"""Serving the gateways: HTTPS with the broker's rules (``tether.server.tls``), SIGHUP
reload of the certificate files, and TLS towards a broker that serves it (its CA, and this
gateway's client certificate when the broker checks them). docs/tls.md."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket as socketlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from tether.cli._common import run
from tether.config import Limits
from tether.server.http_protocol import uvicorn_options
from tether.server.tls import CLIENT_CERT_MODES, ClientTls, TlsFiles, from_options

if TYPE_CHECKING:
    import ssl

    import uvicorn

    from tether.gateway.authorizer import RemoteAuthorizer

log = logging.getLogger("tether")


def broker_tls_options(fn: Callable[..., None]) -> Callable[..., None]:
    """``--broker-ca`` and the gateway's client certificate, for a broker serving TLS."""
    path = click.Path(dir_okay=False, path_type=Path)
    for option in reversed(
        [
            click.option(
                "--broker-ca",
                type=path,
                envvar="TETHER_BROKER_CA",
                help="PEM CA bundle the broker's certificate must chain to (else the default bundle).",
            ),
            click.option(
                "--broker-client-cert",
                type=path,
                envvar="TETHER_BROKER_CLIENT_CERT",
                help="This gateway's client certificate for a broker with `tls.client_cert` set; "
                "re-read on SIGHUP.",
            ),
            click.option(
                "--broker-client-key",
                type=path,
                envvar="TETHER_BROKER_CLIENT_KEY",
                help="The client certificate's unencrypted PEM private key.",
            ),
        ]
    ):
        fn = option(fn)
    return fn


def remote_authorizer(
    broker: str, identity: Callable[[], str], client: ClientTls | None, ctx: ssl.SSLContext | None = None
) -> tuple[RemoteAuthorizer, Callable[[], object] | None]:
    """The broker client, over ``client``'s TLS settings when given (``ctx``: the context
    made from them, when the caller shares it with another broker client); and what SIGHUP
    re-reads (the client certificate)."""
    from tether.gateway.authorizer import RemoteAuthorizer

    if client is None:
        return RemoteAuthorizer(broker, identity), None
    import httpx

    tls = ctx if ctx is not None else client.context()
    authorizer = RemoteAuthorizer(broker, identity, transport=httpx.AsyncHTTPTransport(verify=tls))
    return authorizer, lambda: client.reload(tls)


def broker_tls(ca: Path | None, cert: Path | None, key: Path | None) -> ClientTls | None:
    """The checked ``--broker-*`` TLS options; ``None`` when none is given."""
    if ca is None and cert is None and key is None:
        return None
    client = ClientTls(ca, cert, key)
    run(client.context)  # a wrong file stops the gateway before it listens
    return client


def tls_options(fn: Callable[..., None]) -> Callable[..., None]:
    """``--tls-*``: the broker's ``[tls]`` settings as options (docs/tls.md)."""
    path = click.Path(dir_okay=False, path_type=Path)
    for option in reversed(
        [
            click.option(
                "--tls-cert",
                type=path,
                envvar="TETHER_GATEWAY_TLS_CERT",
                help="Serve HTTPS with this PEM certificate chain (leaf first); re-read on SIGHUP.",
            ),
            click.option(
                "--tls-key",
                type=path,
                envvar="TETHER_GATEWAY_TLS_KEY",
                help="The certificate's unencrypted PEM private key; re-read on SIGHUP.",
            ),
            click.option(
                "--tls-client-ca",
                type=path,
                envvar="TETHER_GATEWAY_TLS_CLIENT_CA",
                help="PEM CA bundle that client certificates must chain to.",
            ),
            click.option(
                "--tls-client-cert",
                type=click.Choice(CLIENT_CERT_MODES),
                default="none",
                show_default=True,
                envvar="TETHER_GATEWAY_TLS_CLIENT_CERT",
                help="Client certificates: `optional` checks one when presented, `required` refuses "
                "a client without one.",
            ),
        ]
    ):
        fn = option(fn)
    return fn


def gateway_tls(
    cert: Path | None, key: Path | None, client_ca: Path | None, client_cert: str
) -> TlsFiles | None:
    """The checked ``--tls-*`` options; a wrong file stops the gateway before it listens."""
    tls: TlsFiles | None = run(lambda: from_options(cert, key, client_ca, client_cert))
    if tls is not None:
        run(tls.context)
    return tls


def server_config(app: Any, host: str, port: int, tls: TlsFiles | None) -> uvicorn.Config:
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        server_header=False,
        date_header=False,
        **(tls.uvicorn_options() if tls is not None else {}),
        **uvicorn_options(Limits().max_header_bytes),
    )


async def serve_http(
    config: uvicorn.Config,
    tls: TlsFiles | None,
    sock: socketlib.socket | None = None,
    on_hup: Callable[[], object] | None = None,
) -> None:
    """Run ``config``'s server (on ``sock`` when given) until SIGINT/SIGTERM stops it
    (exit status 0: uvicorn's own handling would re-raise the signal after shutdown and
    end the process with it). With TLS, SIGHUP re-reads the certificate files into the
    live context: open connections keep their session, new handshakes get the new
    certificate (``tether.server.tls``); ``on_hup`` (the client certificate towards the
    broker) is re-read too. Without either, SIGHUP is logged and otherwise ignored."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # the loop's handlers below ask the server to exit

    config.load()
    loop = asyncio.get_running_loop()
    server = Server(config)
    background: set[asyncio.Future[object]] = set()  # the loop holds only weak references
    handled = [signal.SIGINT, signal.SIGTERM]
    for sig in handled:
        loop.add_signal_handler(sig, server.handle_exit, sig, None)
    jobs: list[Callable[[], object]] = [] if on_hup is None else [on_hup]
    if tls is not None:
        live = tls.install(config)
        jobs.append(lambda: tls.reload(live))

    def reload() -> None:
        if not jobs:  # nothing to re-read; a reload (`systemctl reload`) must not stop it
            log.warning("SIGHUP: no certificate files to reload")
        for job in jobs:
            future = loop.run_in_executor(None, job)
            background.add(future)
            future.add_done_callback(background.discard)

    handled.append(signal.SIGHUP)
    loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        await server.serve(sockets=[sock] if sock is not None else None)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
