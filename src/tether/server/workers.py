"""``tether serve --workers N``: N broker processes on one listening socket.

A decision is CPU-bound Python (token verification, Cedar, hashing), so one process uses
one core. The parent reserves the port, forks N workers that each start their own
``Runtime`` and listen on that port, and forwards SIGHUP/SIGINT/SIGTERM to all of them.

On Linux each worker listens on a socket of its own bound with ``SO_REUSEPORT``, and the
kernel spreads new connections over them by a hash of the client's address. One socket
shared by all workers would let whichever event loop wakes first accept a whole burst of
connections: with keep-alive clients one worker then served every request while the other
sat idle (docs/architecture.md, "Several workers on one port").

What keeps N workers correct:

* each worker is its own audit writer: node id ``<node_id>-w<i>``, its own hash chain,
  claimed like a replica's (``Replica.claim`` refuses a duplicate);
* only worker 0 (the primary) runs the admin socket and the Workload API socket; the
  periodic jobs run in the holder of the leader lease (``tether.leader``), so none runs
  twice;
* an admin change held in each worker's memory (``tether policy reload``, ``promote``,
  ``shadow``) reaches worker 0 first, which passes it on to the others over their peer
  sockets and reports how many applied it (``tether.server.worker_peers``,
  ``tether.server.policy_ops.across_workers``); SIGHUP to the parent reaches every worker
  directly;
* everything that must be shared already lives in the store: task state (read on every
  decision), DPoP ``jti``s, approvals, leases, keys;
* metrics: the parent makes a fresh ``PROMETHEUS_MULTIPROC_DIR`` before forking, so every
  worker's counters land in files there and ``/metrics`` on any worker sums them all
  (``tether.metrics``); it is removed when the parent exits.

If any worker exits, the parent stops the others and exits with an error: a broker that
silently lost its primary would stop reaping.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import FrameType

from tether.config import Settings
from tether.errors import ConfigError

log = logging.getLogger("tether")

MAX_WORKERS = 64


#: Each worker listens on its own socket and the kernel balances connections between them.
BALANCED = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def listening_socket(host: str, port: int, *, reuse_port: bool = False, listen: bool = True) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if listen:
            sock.listen(2048)
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def reserve_port(host: str, port: int) -> socket.socket:
    """The parent's hold on the port: bound (so a port in use fails before any fork, and
    port 0 is resolved once) but, where connections are balanced, not listening: only
    listening sockets receive connections, so none is queued where no one accepts."""
    return listening_socket(host, port, reuse_port=BALANCED, listen=not BALANCED)


def worker_socket(reserved: socket.socket) -> socket.socket:
    """A worker's listening socket on the reserved port: its own, or the shared one."""
    if not BALANCED:
        return reserved
    host, port = reserved.getsockname()[:2]
    sock = listening_socket(host, port, reuse_port=True)
    reserved.close()  # this process's copy; the parent keeps the reservation
    return sock


def worker_settings(settings: Settings, index: int) -> Settings:
    """The settings of worker ``index``: its own audit chain / replica id; the Workload API
    socket, like the admin socket, is served by worker 0 alone (one path, one server)."""
    ident = settings.identity if index == 0 else replace(settings.identity, workload_socket="")
    return replace(settings, node_id=f"{settings.node_id[:60]}-w{index}", identity=ident)


def _worker(
    settings: Settings,
    index: int,
    workers: int,
    sock: socket.socket,
    peers_dir: Path,
    on_ready: Callable[[], None] | None,
) -> None:
    from tether.runtime import Runtime
    from tether.server.http_protocol import run as run_loop
    from tether.server.policy_ops import PEER_OPERATIONS, across_workers
    from tether.server.serve import serve
    from tether.server.worker_peers import PeerServer, WorkerPeers

    rt = Runtime.start(worker_settings(settings, index))
    peer: PeerServer | None = None
    try:
        if index == 0:  # the admin socket's worker: policy changes go on to the others
            across_workers(rt, WorkerPeers(peers_dir, workers))
        else:
            peer = PeerServer(rt, peers_dir, index, PEER_OPERATIONS)
            peer.start()
        listener = worker_socket(sock)
        run_loop(serve(rt, on_ready=on_ready if index == 0 else None, sock=listener, primary=index == 0))
    finally:
        if peer is not None:
            peer.close()
        rt.close()


def serve_workers(settings: Settings, workers: int, on_ready: Callable[[], None] | None = None) -> int:
    """Run ``workers`` broker processes until a signal stops them; the exit status."""
    if not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"--workers must be 1-{MAX_WORKERS}")
    if workers > 1 and settings.oauth.enabled:
        # Authorization codes and refresh tokens live in the issuing process (docs/oauth.md):
        # a code redeemed at another worker would be refused. Refuse to start instead.
        raise ConfigError(
            "`oauth.enabled` keeps authorization codes in one process; serve it with one worker",
            code="config_invalid",
            field="oauth.enabled",
        )
    from tether import metrics

    sock = reserve_port(*settings.listen_host_port)
    metrics_dir = tempfile.mkdtemp(prefix="tether-metrics-")
    peers_dir = Path(tempfile.mkdtemp(prefix="tether-workers-"))  # 0700: the peer sockets
    metrics.enable_multiprocess(metrics_dir)
    try:
        return supervise(workers, lambda i: _worker(settings, i, workers, sock, peers_dir, on_ready), sock)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
        shutil.rmtree(peers_dir, ignore_errors=True)


def supervise(workers: int, run_worker: Callable[[int], None], sock: socket.socket) -> int:
    """Fork ``workers`` processes each running ``run_worker(index)`` on the port ``sock``
    reserves (:func:`reserve_port`; each worker takes its listener with
    :func:`worker_socket`), forward SIGHUP/SIGINT/SIGTERM to all of them, and stop the
    others when one exits; the exit status. The parent holds ``sock`` until then, so the
    port stays Tether's while workers come and go. Used by ``tether serve`` and
    ``tether gateway http``/``mcp --workers``."""
    children: dict[int, int] = {}
    for i in range(workers):
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the parent's code
            code = 0
            try:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(sig, signal.SIG_DFL)
                # Until the worker's own SIGHUP handler is in place (it reads the files it
                # would reload as it starts), a forwarded reload must not kill it.
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                run_worker(i)
            except KeyboardInterrupt:
                pass
            except BaseException:
                log.exception("worker %d failed", i)
                code = 1
            finally:
                os._exit(code)
        children[pid] = i
    try:
        return _wait_for(children)
    finally:
        sock.close()


def _wait_for(children: dict[int, int]) -> int:
    """Forward signals to ``children`` (pid → index) until all have exited; the status."""
    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if signum != signal.SIGHUP:
            stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM if signum == signal.SIGINT else signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    status = 0
    while children:
        try:
            pid, raw = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries wait() itself
            continue
        index = children.pop(pid, None)
        code = os.waitstatus_to_exitcode(raw)
        if not stopping:
            print(f"tether: worker {index} exited ({code}); stopping the others", file=sys.stderr)
            status = 1
            forward(signal.SIGTERM, None)
    deadline = time.monotonic() + 10
    while children and time.monotonic() < deadline:  # pragma: no cover - only on a stuck worker
        time.sleep(0.1)
    return status
