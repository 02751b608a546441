"""Local attestation: who is at the other end of a Unix socket, according to the kernel.

The kernel records the peer's pid, uid and gid at ``connect()`` (``SO_PEERCRED``); the
executable's path and digest come from ``/proc/<pid>/exe``. Between the two, the peer may
exit and its pid be reused by another process, whose executable we would then read. Two
defences, best first:

* ``SO_PEERPIDFD`` (Linux 6.5+): a pidfd for the exact process that connected. After
  reading /proc we ask the pidfd whether that process still runs under the same pid; a
  live process holds its pid, so what we read was its own.
* Otherwise, the process start time (``/proc/<pid>/stat`` field 22) is read before and
  after, and must not be later than the moment we accepted the connection.

Either way, a process that vanished is refused (``peer_gone``): fail closed.

Exec after connect: a caller may connect, then ``exec`` a registered binary while another
process holding the socket sends the request. The attestation therefore happens at accept
time and :func:`same_executable` re-checks the executable after the request was read.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import struct
import threading
from dataclasses import dataclass

from tether.errors import Unauthenticated
from tether.linesocket import peer_credentials

#: linux/include/uapi/asm-generic/socket.h; Python does not name it yet.
SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)
MAX_EXE_BYTES = 1024 * 1024 * 1024
_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class PeerFacts:
    """What the kernel says about the caller. ``path``/``sha256`` are None when unreadable
    (the broker may not inspect processes of other users unless it runs as root)."""

    pid: int
    uid: int
    gid: int
    path: str | None
    sha256: str | None
    exe_id: tuple[int, int] | None  # (st_dev, st_ino) of the executable
    method: str  # "pidfd" or "starttime": which PID-reuse defence was used

    def to_dict(self) -> dict[str, object]:
        return {
            "pid": self.pid,
            "uid": self.uid,
            "gid": self.gid,
            "path": self.path,
            "sha256": self.sha256,
            "pid_check": self.method,
        }


def _gone(pid: int) -> Unauthenticated:
    return Unauthenticated(
        f"the calling process {pid} exited before it could be attested; retry", code="peer_gone"
    )


class _DigestCache:
    """SHA-256 of executables by identity; a changed file (size, mtime, ctime) is re-hashed."""

    def __init__(self, limit: int = 256) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[tuple[int, ...], str] = {}
        self._limit = limit

    def digest(self, fd: int) -> str:
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        with self._lock:
            hit = self._by_key.get(key)
        if hit is not None:
            return hit
        if st.st_size > MAX_EXE_BYTES:
            raise OSError("executable too large to hash")
        h = hashlib.sha256()
        with os.fdopen(os.dup(fd), "rb", buffering=0) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        value = h.hexdigest()
        with self._lock:
            if len(self._by_key) >= self._limit:
                self._by_key.clear()
            self._by_key[key] = value
        return value


_digests = _DigestCache()


def peer_pidfd(sock: socket.socket) -> int | None:
    """A pidfd of the connecting process, or None where the kernel lacks SO_PEERPIDFD."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD, 4)
    except OSError:
        return None
    fd: int = struct.unpack("i", raw)[0]
    return fd if fd >= 0 else None


def pidfd_pid(pidfd: int) -> int:
    """The pid the pidfd's process runs as now; -1 once it has exited (Linux fdinfo)."""
    with open(f"/proc/self/fdinfo/{pidfd}") as f:
        for line in f:
            if line.startswith("Pid:"):
                return int(line.split()[1])
    return -1


def start_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    return int(data[data.rindex(b")") + 2 :].split()[19])


def uptime_ticks() -> int:
    with open("/proc/uptime") as f:
        return int(float(f.read().split()[0]) * _CLK_TCK)


def _read_exe(pid: int) -> tuple[str | None, str | None, tuple[int, int] | None]:
    try:
        path: str | None = os.readlink(f"/proc/{pid}/exe")
        fd = os.open(f"/proc/{pid}/exe", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _gone(pid) from None
    except OSError:
        return None, None, None  # not ours to inspect: only uid/gid selectors can match
    try:
        st = os.fstat(fd)
        if path is not None and path.endswith(" (deleted)"):
            path = None  # replaced on disk: the running image has no path any more
        try:
            digest: str | None = _digests.digest(fd)
        except OSError:
            digest = None
        return path, digest, (st.st_dev, st.st_ino)
    finally:
        os.close(fd)


def attest(sock: socket.socket, *, use_pidfd: bool = True) -> PeerFacts:
    """Identify the process that connected ``sock``; raise ``Unauthenticated`` when unsure."""
    accepted = uptime_ticks()
    pid, uid, gid = peer_credentials(sock)
    if pid <= 0:
        # A peer in another pid namespace shows as 0: we cannot look at it, so refuse.
        raise Unauthenticated("the caller's process is not visible to the broker", code="peer_unknown")
    pidfd = peer_pidfd(sock) if use_pidfd else None
    try:
        if pidfd is not None:
            if pidfd_pid(pidfd) != pid:
                raise _gone(pid)
            path, digest, exe_id = _read_exe(pid)
            if pidfd_pid(pidfd) != pid:  # exited while we looked: /proc may show another process
                raise _gone(pid)
            return PeerFacts(pid, uid, gid, path, digest, exe_id, "pidfd")
        try:
            before = start_ticks(pid)
            path, digest, exe_id = _read_exe(pid)
            after = start_ticks(pid)
        except (FileNotFoundError, ProcessLookupError):
            raise _gone(pid) from None
        # A process started after we accepted cannot be the one that connected.
        if before != after or before > accepted:
            raise _gone(pid)
        return PeerFacts(pid, uid, gid, path, digest, exe_id, "starttime")
    finally:
        if pidfd is not None:
            os.close(pidfd)


def same_executable(facts: PeerFacts) -> bool:
    """Whether the attested process still runs the executable it ran at accept time."""
    if facts.exe_id is None:
        return True  # nothing was read, nothing could have matched on it
    with contextlib.suppress(OSError):
        st = os.stat(f"/proc/{facts.pid}/exe")
        return (st.st_dev, st.st_ino) == facts.exe_id
    return False
