"""One broker per state directory.

A second broker on the same state directory would fight the first over its sockets
(admin, Workload API), its audit chain and its port. ``claim`` takes an exclusive
``flock`` on ``broker.lock`` in the state directory, held until the process exits (the
kernel drops it even after ``kill -9``, so a stale file never blocks a restart), and
writes the holder's pid and address into it so that the refused second start can name
the running one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import IO, Any

from tether.errors import Conflict

LOCK_FILE = "broker.lock"


class InstanceLock:
    def __init__(self, path: Path, handle: IO[str]) -> None:
        self.path = path
        self._handle = handle

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self._handle.truncate(0)
        self._handle.close()  # closing drops the flock


def holder(state_dir: Path) -> dict[str, Any]:
    """What the running broker wrote into the lock file (pid, listen), or ``{}``."""
    try:
        doc = json.loads((state_dir / LOCK_FILE).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def claim(state_dir: Path, listen: str) -> InstanceLock:
    """Become the one broker of ``state_dir``, or raise ``Conflict(code="broker_running")``."""
    path = state_dir / LOCK_FILE
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the process's life
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        other = holder(state_dir)
        where = f"pid {other.get('pid', '?')}, http://{other.get('listen', '?')}"
        raise Conflict(
            f"a broker is already running on `{state_dir}` ({where}); stop it first, "
            "or give this one another `--state-dir`",
            code="broker_running",
            pid=other.get("pid"),
            listen=other.get("listen"),
        ) from None
    handle.seek(0)
    handle.truncate(0)
    handle.write(json.dumps({"pid": os.getpid(), "listen": listen, "started_at": time.time()}))
    handle.flush()
    return InstanceLock(path, handle)
