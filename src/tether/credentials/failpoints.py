"""Crash points for the kill -9 tests (in the spirit of etcd's gofail).

``TETHER_FAILPOINT=<name>`` makes the process SIGKILL itself when it reaches that point,
so a test can crash the broker at an exact step of minting and check that a restart
leaves nothing behind. The variable is read once, when this module is imported: the
crash tests set it in the environment of the process they start, and an unset point (always,
in production) then costs one comparison, not an environment lookup per step.
"""

from __future__ import annotations

import os
import signal

ENV = "TETHER_FAILPOINT"
_ARMED = os.environ.get(ENV) or None


def hit(name: str) -> None:
    if _ARMED is not None and name == _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
