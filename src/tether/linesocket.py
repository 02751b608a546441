"""One JSON object per line over a Unix socket: the protocol of the operator's admin socket
and of the local Workload API, and the kernel's word on who is at the other end.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tether.errors import Unavailable


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end, as the kernel recorded them at connect."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def connect_path(sock: socket.socket, path: Path) -> None:
    """Connect to a socket path of any length (``sun_path`` holds ~107 bytes; longer paths
    go through the directory's file descriptor)."""
    if len(os.fsencode(path)) < 100:
        sock.connect(str(path))
        return
    dirfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        sock.connect(f"/proc/self/fd/{dirfd}/{path.name}")
    finally:
        os.close(dirfd)


def exchange(path: Path, request: Mapping[str, Any], *, timeout: float) -> bytes:
    """Send one request line and return the reply line (``b""`` if the peer hung up).

    Connection failures (``FileNotFoundError``, ``ConnectionRefusedError``,
    ``PermissionError``) propagate: each caller says what they mean for its socket.
    """
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        connect_path(s, path)
        s.sendall(json.dumps(dict(request)).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        return buf
    finally:
        s.close()


def refuse_if_served(path: Path) -> None:
    """Raise if another live process accepts connections on the Unix socket ``path``:
    a socket file is only replaced when nobody answers on it (a stale one)."""
    if not path.is_socket():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        connect_path(probe, path)
    except OSError:
        return  # nobody listening: stale, safe to replace
    finally:
        probe.close()
    raise Unavailable(
        f"`{path}` is served by another running process; stop it first", code="socket_in_use", field=str(path)
    )
