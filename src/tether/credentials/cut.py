"""Cut first: make revoked credentials unusable at their system at once, clean up later.

When a task tree ends, its external leases (PostgreSQL roles) are handed to the
:class:`Cutter` right after the ending transaction commits. Each target (connector,
service) has its own worker thread: it takes *everything* queued for that target and
cuts it in one round trip (``NOLOGIN`` committed, then every session terminated), so a
close of a tree with many leases costs one statement per target, and a target that hangs
delays only its own cuts (the admin connections carry statement and connect timeouts).

The cut is the fast path, not the record: the leases are already ``revoking`` in the
store, and the claimed cleanup (``reaper.py``) cuts again before it drops each role. If
this process dies between commit and cut, another replica's cleanup does both.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, runtime_checkable

from tether.credentials.leases import Lease

log = logging.getLogger("tether.credentials")


@runtime_checkable
class Cuts(Protocol):
    """A connector whose credentials can be made unusable in a batch, before cleanup."""

    def cut(self, service: str, roles: Sequence[str]) -> None: ...


class _Target:
    def __init__(self, cutter: Cutter, key: tuple[str, str]) -> None:
        self.key = key
        self.queue: list[tuple[str, float]] = []  # (role, when queued: monotonic)
        self.cond = threading.Condition()
        self.thread = threading.Thread(
            target=cutter._work, args=(self,), name=f"tether-cut-{key[1]}"[:64], daemon=True
        )


class Cutter:
    def __init__(
        self, connectors: Mapping[str, object], *, on_cut: Callable[[int, float], None] | None = None
    ) -> None:
        self._connectors = connectors
        self._targets: dict[tuple[str, str], _Target] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.on_cut = on_cut  # (roles cut, seconds the oldest waited): for metrics and bench
        self.cuts = 0
        self.failures = 0

    def submit(self, leases: Sequence[Lease]) -> None:
        """Queue the leases' credentials for cutting; returns at once."""
        if self._stop.is_set():
            return
        now = time.monotonic()
        for lease in leases:
            if not isinstance(self._connectors.get(lease.connector), Cuts):
                continue
            role = lease.material.get("role")
            if not isinstance(role, str):
                continue
            key = (lease.connector, str(lease.material.get("service", lease.audience)))
            target = self._target(key)
            with target.cond:
                target.queue.append((role, now))
                target.cond.notify()

    def _target(self, key: tuple[str, str]) -> _Target:
        # One worker per target for the life of the process: targets are the configured
        # services, a handful.
        with self._lock:
            t = self._targets.get(key)
            if t is None:
                t = self._targets[key] = _Target(self, key)
                t.thread.start()
            return t

    def _work(self, target: _Target) -> None:
        connector = self._connectors[target.key[0]]
        assert isinstance(connector, Cuts)
        while not self._stop.is_set():
            with target.cond:
                while not target.queue and not self._stop.is_set():
                    target.cond.wait()
                batch, target.queue = target.queue, []
            if not batch:
                return
            roles = sorted({r for r, _ in batch})
            try:
                connector.cut(target.key[1], roles)
            except Exception as exc:  # the cleanup cuts again; it owns retries and the record
                self.failures += 1
                log.warning("cutting %d credentials on `%s` failed: %s", len(roles), target.key[1], exc)
                continue
            self.cuts += len(roles)
            if self.on_cut is not None:
                self.on_cut(len(roles), time.monotonic() - min(t for _, t in batch))

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._lock:
            targets = list(self._targets.values())
        for t in targets:
            with t.cond:
                t.cond.notify_all()
        for t in targets:
            t.thread.join(timeout)
