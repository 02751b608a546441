"""Rotation of legacy secrets: write new → verify → switch → retire old.

A rotator changes the secret at its owner. The broker's stored value is switched only
after the new one is verified, so a failure before the switch leaves the previous secret
working (a PostgreSQL role has a single password: its rotator puts the old one back when
the new one does not verify). Every outcome is audited by :func:`tether.legacy.ops`.

Rotation specs (``secret_inventory.rotation``) hold no secret:
``{"kind": "postgres", "dsn": "postgresql://app@host/db", "admin_dsn_env": "VAR"}``
``{"kind": "command", "argv": ["./rotate-key", "--service", "x"]}``
"""

from __future__ import annotations

import os
import secrets as _random
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from tether.errors import InvalidRequest

COMMAND_TIMEOUT = 60.0


class RotationFailed(Exception):
    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage, self.reason = stage, reason


class Rotator(Protocol):
    def create(self, old: str) -> str: ...
    def verify(self, new: str) -> None: ...
    def undo(self, old: str) -> None: ...
    def retire(self, old: str, new: str) -> None: ...


@dataclass
class Outcome:
    status: str  # ok | retire_failed
    new: str
    error: str | None = None


def rotate(rotator: Rotator, old: str, switch: Callable[[str], None]) -> Outcome:
    """Run one rotation; raises :class:`RotationFailed` when the old secret is still the one in use."""
    try:
        new = rotator.create(old)
    except RotationFailed:
        raise
    except Exception as exc:
        raise RotationFailed("create", _why(exc)) from None
    try:
        rotator.verify(new)
    except Exception as exc:
        why = exc.reason if isinstance(exc, RotationFailed) else _why(exc)
        try:
            rotator.undo(old)
        except Exception as undo_exc:
            why += f"; restoring the old secret failed too: {_why(undo_exc)}"
        raise RotationFailed("verify", why) from None
    try:
        switch(new)
    except Exception as exc:
        try:
            rotator.undo(old)
        except Exception as undo_exc:
            raise RotationFailed("switch", f"{_why(exc)}; restoring failed: {_why(undo_exc)}") from None
        raise RotationFailed("switch", _why(exc)) from None
    try:
        rotator.retire(old, new)
    except Exception as exc:
        return Outcome("retire_failed", new, exc.reason if isinstance(exc, RotationFailed) else _why(exc))
    return Outcome("ok", new)


def _why(exc: BaseException) -> str:
    # Driver messages can quote a DSN; keep the first line only, and never a value we hold.
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


class PostgresRotator:
    """``ALTER ROLE … PASSWORD`` as an admin; verify by logging in with the new password."""

    def __init__(self, dsn: str, admin_dsn: str) -> None:
        import psycopg

        self._psycopg = psycopg
        info = psycopg.conninfo.conninfo_to_dict(dsn)
        self.role = str(info.get("user") or "")
        if not self.role:
            raise InvalidRequest("the rotation `dsn` names no user", code="rotation_invalid", field="dsn")
        self.dsn, self.admin_dsn = dsn, admin_dsn

    def _set(self, password: str) -> None:
        from psycopg import sql

        with self._psycopg.connect(self.admin_dsn, autocommit=True, connect_timeout=5) as c:
            c.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(self.role), sql.Literal(password))
            )

    def create(self, old: str) -> str:
        new = _random.token_urlsafe(24)
        self._set(new)
        return new

    def verify(self, new: str) -> None:
        with self._psycopg.connect(self.dsn, password=new, connect_timeout=5) as c:
            c.execute("SELECT 1")

    def undo(self, old: str) -> None:
        self._set(old)

    def retire(self, old: str, new: str) -> None:
        # The role's password is already the new one; prove the old one is refused.
        try:
            with self._psycopg.connect(self.dsn, password=old, connect_timeout=5):
                pass
        except self._psycopg.OperationalError:
            return
        raise RotationFailed("retire", "the old password still logs in")


class CommandRotator:
    """A command that owns the secret's API: ``argv new|verify|retire``, secrets on stdin/stdout.

    ``new`` reads the old secret and prints the new one; ``verify`` reads the new one;
    ``retire`` reads the old one. Exit status 0 means done; anything else is a failure whose
    reason is the last line of stderr.
    """

    def __init__(self, argv: list[str]) -> None:
        if not argv or not all(isinstance(a, str) and a for a in argv):
            raise InvalidRequest("the rotation `argv` must be a non-empty list of strings",
                                 code="rotation_invalid", field="argv")  # fmt: skip
        self.argv = argv

    def _run(self, stage: str, stdin: str) -> str:
        try:
            r = subprocess.run([*self.argv, stage], input=stdin + "\n", capture_output=True, text=True,
                               timeout=COMMAND_TIMEOUT, check=False, env={**os.environ})  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RotationFailed(stage, _why(exc)) from None
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
            raise RotationFailed(stage, last[:300])
        return r.stdout

    def create(self, old: str) -> str:
        new = self._run("new", old).strip().splitlines()
        if not new or not new[0]:
            raise RotationFailed("create", "the command printed no new secret")
        return new[0]

    def verify(self, new: str) -> None:
        self._run("verify", new)

    def undo(self, old: str) -> None:
        return None  # the provider keeps the old key until `retire`: nothing to restore

    def retire(self, old: str, new: str) -> None:
        self._run("retire", old)


def check_spec(spec: dict[str, Any]) -> None:
    """Refuse a spec that could never run (at import time rather than at the first rotation)."""
    kind = spec.get("kind")
    every = spec.get("every_days")
    if every is not None and (
        isinstance(every, bool) or not isinstance(every, int | float) or not 0 < every <= 3650
    ):
        raise InvalidRequest("`every_days` must be a number of days in (0, 3650]",
                             code="rotation_invalid", field="every_days")  # fmt: skip
    if kind == "postgres":
        if not isinstance(spec.get("dsn"), str) or not isinstance(spec.get("admin_dsn_env"), str):
            raise InvalidRequest("a postgres rotation needs `dsn` and `admin_dsn_env`",
                                 code="rotation_invalid", field="rotation")  # fmt: skip
    elif kind == "command":
        CommandRotator(spec.get("argv") if isinstance(spec.get("argv"), list) else [])  # type: ignore[arg-type]
    else:
        raise InvalidRequest(f"unknown rotation kind `{kind}`; use `postgres` or `command`",
                             code="rotation_invalid", field="rotation")  # fmt: skip


def rotator_for(spec: dict[str, Any], environ: dict[str, str] | None = None) -> Rotator:
    env = os.environ if environ is None else environ
    kind = spec.get("kind")
    if kind == "postgres":
        var = str(spec.get("admin_dsn_env") or "")
        admin = env.get(var) if var else None
        if not admin:
            raise InvalidRequest(f"rotation needs the admin DSN in the broker's environment variable `{var}`",
                                 code="rotation_invalid", field="admin_dsn_env")  # fmt: skip
        return PostgresRotator(str(spec.get("dsn") or ""), admin)
    if kind == "command":
        argv = spec.get("argv")
        return CommandRotator(list(argv) if isinstance(argv, list) else [])
    raise InvalidRequest(f"unknown rotation kind `{kind}`; use `postgres` or `command`",
                         code="rotation_invalid", field="rotation")  # fmt: skip
