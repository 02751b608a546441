"""Crash points for the kill -9 tests (in the spirit of etcd's gofail).

``TETHER_FAILPOINT=<name>`` makes the process SIGKILL itself when it reaches that point,
so a test can crash the broker at an exact step of minting and check that a restart
leaves nothing behind. Unset (always, in production) it costs one dict lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "TETHER_FAILPOINT"


def hit(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
