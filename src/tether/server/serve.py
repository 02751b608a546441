"""Run a broker: the HTTP API, the admin socket and the reaper, in one asyncio loop.

SIGHUP reloads the policy directory (the old set stays in force when the new one is
invalid) and, with ``[tls]``, the certificate and key (``tether.server.tls``).
SIGINT/SIGTERM stop cleanly. Under ``tether serve --workers N``
(``tether.server.workers``) each worker runs this on a shared listening socket; only the
primary one serves the admin socket. Every worker and replica runs the periodic loop;
the cluster-wide jobs in it run only in the process holding the leader lease
(``tether.leader``), so none runs twice, and another process takes over when it dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Iterator

import uvicorn

from tether.errors import TetherError
from tether.runtime import Runtime
from tether.server.admin import AdminServer
from tether.server.app import create_app
from tether.server.protocol import bounded_protocol
from tether.server.tls import files as tls_files

log = logging.getLogger("tether")

REAP_INTERVAL = 2.0


class _Server(uvicorn.Server):
    """uvicorn's server without its signal capture: uvicorn re-raises a captured SIGTERM
    after shutdown, which kills the process before the runtime closes (no final audit
    checkpoint). Here SIGINT/SIGTERM ask for a graceful exit and the caller's cleanup runs."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


def reap_once(rt: Runtime) -> bool:
    """This process's own jobs (its chain's checkpoints); then, when it holds the leader
    lease, the cluster-wide ones: expire due tasks, rotate the signing key when due, the
    layers' jobs. Returns whether the cluster-wide jobs ran."""
    for job in rt.node_periodic:
        _run_job(job)
    if not rt.is_leader():
        return False
    rt.broker.expire_due()
    rt.keys.rotate_if_due()
    for job in rt.periodic:
        _run_job(job)
    return True


def _run_job(job: Callable[[], object]) -> None:
    try:
        job()
    except Exception:  # one failing job must not starve the others
        log.exception("periodic job %r failed", job)


async def _reaper(rt: Runtime, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await asyncio.to_thread(reap_once, rt)
        except TetherError as exc:
            log.warning("reaper: %s", exc)
        except Exception:
            log.exception("reaper failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=REAP_INTERVAL)


async def serve(
    rt: Runtime,
    *,
    on_ready: Callable[[], Awaitable[None] | None] | None = None,
    sock: socket.socket | None = None,
    primary: bool = True,
) -> None:
    """Serve ``rt`` until stopped; on ``sock`` (already listening) when given. A worker
    that is not ``primary`` serves no admin socket."""
    host, port = rt.settings.listen_host_port
    app = create_app(rt)
    limits = rt.settings.limits
    tls = tls_files(rt.settings)
    ssl_context = tls.context() if tls is not None else None  # a wrong file fails before listening
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        # Slow and idle clients are bounded in the protocol (see tether.server.protocol).
        http=bounded_protocol(
            header_timeout=limits.header_timeout_seconds,
            body_timeout=limits.body_timeout_seconds,
            max_connections=limits.max_connections,
            max_header_bytes=limits.max_header_bytes,
        ),
        timeout_keep_alive=limits.keepalive_seconds,
        server_header=False,
        date_header=False,
        # Named so uvicorn marks requests `https`; the context it would build is replaced
        # below by ours, which SIGHUP reloads in place.
        ssl_certfile=str(tls.cert) if tls is not None else None,
        ssl_keyfile=str(tls.key) if tls is not None else None,
    )
    config.load()
    if ssl_context is not None:
        config.ssl = ssl_context
    # Everything built so far (the runtime, the app, the imported modules: ~130k objects)
    # lives as long as the process: out of the collector's sight, so a full collection
    # scans only what requests allocate instead of stalling one of them for tens of ms.
    gc.freeze()
    server = _Server(config)
    admin = AdminServer(rt, rt.settings.admin_socket) if primary else None
    if admin is not None:
        await admin.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def reload_policy() -> None:
        async def run() -> None:
            if tls is not None and ssl_context is not None:
                await asyncio.to_thread(tls.reload, ssl_context)
            try:
                version = await asyncio.to_thread(rt.reload_policy)
                log.warning("policy reloaded: %s", version)
            except TetherError as exc:
                log.error("policy reload refused: %s", exc.message)

        background.add(task := loop.create_task(run()))
        task.add_done_callback(background.discard)

    # The loop keeps only weak references to tasks: hold them until they finish.
    background: set[asyncio.Task[None]] = set()
    loop.add_signal_handler(signal.SIGHUP, reload_policy)
    reaper = asyncio.create_task(_reaper(rt, stop))
    try:
        if on_ready is not None:

            async def announce() -> None:
                while not server.started:
                    await asyncio.sleep(0.05)
                result = on_ready()
                if result is not None:
                    await result

            background.add(announcer := loop.create_task(announce()))
            announcer.add_done_callback(background.discard)
        await server.serve(sockets=[sock] if sock is not None else None)
    finally:
        stop.set()
        await reaper
        if admin is not None:
            await admin.close()
        loop.remove_signal_handler(signal.SIGHUP)
