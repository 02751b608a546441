"""Admin-socket operations of the credentials layer (``tether leases``, ``tether secrets``)."""

from __future__ import annotations

from typing import Any

from tether.credentials import leases as ls
from tether.credentials.secrets import check_name
from tether.errors import InvalidRequest
from tether.server.admin import Operator, operation


def _creds(rt: Any) -> Any:
    return rt.extras["credentials"]


def _str(args: dict[str, Any], key: str, required: bool = True) -> str | None:
    v = args.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v:
        raise InvalidRequest(f"missing argument `{key}`", code="missing_field", field=key)
    return v


@operation("leases.list")
def leases_list(rt: Any, args: dict[str, Any], op: Operator) -> Any:
    with rt.db.read() as conn:
        rows = ls.list_leases(
            conn,
            state=_str(args, "state", False),
            task_id=_str(args, "task_id", False),
            irrevocable=bool(args.get("irrevocable")),
        )
    return [x.view() for x in rows]


@operation("leases.revoke")
def leases_revoke(rt: Any, args: dict[str, Any], op: Operator) -> Any:
    lease = _creds(rt).service.revoke_lease(_str(args, "lease_id"), by=op.name)
    return lease.view()


@operation("leases.stats")
def leases_stats(rt: Any, args: dict[str, Any], op: Operator) -> Any:
    return _creds(rt).service.metrics()


@operation("leases.reap")
def leases_reap(rt: Any, args: dict[str, Any], op: Operator) -> Any:
    return _creds(rt).reaper.reap()


@operation("secrets.set")
def secrets_set(rt: Any, args: dict[str, Any], op: Operator) -> Any:
    name = check_name(_str(args, "name") or "")
    _creds(rt).secrets.set(name, _str(args, "value"), header=_str(args, "header", False) or "Authorization")
    return {"name": name}  # never echo the value


@operation("secrets.list")
def secrets_list(rt: Any, args: dict[str, Any], op: Operator) -> Any:
    return _creds(rt).secrets.names()


@operation("secrets.delete")
def secrets_delete(rt: Any, args: dict[str, Any], op: Operator) -> Any:
    return {"deleted": _creds(rt).secrets.delete(_str(args, "name") or "")}
