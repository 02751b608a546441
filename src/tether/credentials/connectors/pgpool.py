"""Pooled admin connections to the PostgreSQL targets of the ``postgres`` connector.

One small pool per target (service id): minting and revoking reuse a warm connection
instead of paying a connect + SCRAM handshake per operation. Every connection is opened
with a connect timeout and runs with a statement and a lock timeout, so a target that
hangs or a lock held by someone else turns into an error for that target's work within
seconds — it never stalls other targets (each target's revocations run in their own
worker, see ``credentials/cut.py``).

A connection that saw an error is closed, not returned: its session state is unknown.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tether.errors import Unavailable

CONNECT_TIMEOUT_S = 5
STATEMENT_TIMEOUT_MS = 5000
LOCK_TIMEOUT_MS = 3000
MAX_IDLE = 8  # per target; more may be open at once, the surplus is closed on return


def with_timeouts(dsn: str) -> str:
    info = conninfo_to_dict(dsn)
    opts = str(info.get("options") or "")
    info["options"] = (
        f"{opts} -c statement_timeout={STATEMENT_TIMEOUT_MS} -c lock_timeout={LOCK_TIMEOUT_MS} "
        f"-c idle_in_transaction_session_timeout={STATEMENT_TIMEOUT_MS * 2}"
    ).strip()
    info.setdefault("connect_timeout", str(CONNECT_TIMEOUT_S))
    info.setdefault("application_name", "tether-admin")
    return make_conninfo("", **info)


class AdminPool:
    """Autocommit admin connections per service; use ``conn.transaction()`` for a unit."""

    def __init__(self, dsns: Mapping[str, str]) -> None:
        self._dsns = {k: with_timeouts(v) for k, v in dsns.items()}
        self._idle: dict[str, list[psycopg.Connection[Any]]] = {k: [] for k in dsns}
        self._lock = threading.Lock()
        self.opened = 0  # connections ever opened (tests and bench read it)

    def services(self) -> list[str]:
        return list(self._dsns)

    def set_dsn(self, service: str, dsn: str) -> None:
        """Point a service at another server (drops its idle connections)."""
        with self._lock:
            self._dsns[service] = with_timeouts(dsn)
            idle, self._idle[service] = self._idle.get(service, []), []
        for c in idle:
            c.close()

    def _open(self, service: str) -> psycopg.Connection[Any]:
        dsn = self._dsns.get(service)
        if dsn is None:
            raise Unavailable(
                f"no admin connection configured for `{service}`; set `credentials.postgres.{service}`",
                code="connector_not_configured",
            )
        try:
            conn = psycopg.connect(dsn, autocommit=True)
        except psycopg.Error as exc:
            raise Unavailable(
                f"postgres for `{service}` is unreachable; the action is denied", code="connector_unavailable"
            ) from exc
        with self._lock:
            self.opened += 1
        return conn

    @contextlib.contextmanager
    def connection(self, service: str) -> Iterator[psycopg.Connection[Any]]:
        conn = None
        with self._lock:
            idle = self._idle.get(service) or []
            while idle and conn is None:
                cand = idle.pop()
                if cand.closed or cand.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    cand.close()
                else:
                    conn = cand
        if conn is None:
            conn = self._open(service)
        ok = False
        try:
            yield conn
            ok = True
        finally:
            healthy = ok and not conn.closed
            healthy = healthy and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            keep = False
            if healthy:
                with self._lock:
                    idle = self._idle.setdefault(service, [])
                    if len(idle) < MAX_IDLE:
                        idle.append(conn)
                        keep = True
            if not keep:
                conn.close()

    def close(self) -> None:
        with self._lock:
            idle = [c for cs in self._idle.values() for c in cs]
            self._idle = {k: [] for k in self._idle}
        for c in idle:
            c.close()
