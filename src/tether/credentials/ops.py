"""Admin-socket operations of the credentials layer (``tether leases``, ``tether secrets``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tether.credentials import leases as ls
from tether.credentials.secrets import check_name
from tether.errors import InvalidRequest
from tether.server.admin import OperationTable, Operator

if TYPE_CHECKING:
    from tether.runtime import Runtime

#: This module's admin operations (``Runtime.operations`` holds them once built).
OPERATIONS = OperationTable()
operation = OPERATIONS.operation


def _req(args: dict[str, Any], key: str) -> str:
    return _str(args, key) or ""  # ``_str`` raises when a required argument is missing


def _str(args: dict[str, Any], key: str, required: bool = True) -> str | None:
    v = args.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v:
        raise InvalidRequest(f"missing argument `{key}`", code="missing_field", field=key)
    return v


@operation("leases.list")
def leases_list(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
    with rt.db.read() as conn:
        rows = ls.list_leases(
            conn,
            state=_str(args, "state", False),
            task_id=_str(args, "task_id", False),
            irrevocable=bool(args.get("irrevocable")),
        )
    return [x.view() for x in rows]


@operation("leases.revoke")
def leases_revoke(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
    lease = rt.credentials.service.revoke_lease(_req(args, "lease_id"), by=op.name)
    return lease.view()


@operation("leases.stats")
def leases_stats(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
    return rt.credentials.service.metrics()


@operation("leases.reap")
def leases_reap(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
    return rt.credentials.reaper.reap()


@operation("secrets.set")
def secrets_set(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
    name = check_name(_str(args, "name") or "")
    header = _str(args, "header", False) or "Authorization"
    rt.credentials.secrets.set(name, _req(args, "value"), header=header)
    return {"name": name}  # never echo the value


@operation("secrets.list")
def secrets_list(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
    return rt.credentials.secrets.names()


@operation("secrets.delete")
def secrets_delete(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
    return {"deleted": rt.credentials.secrets.delete(_str(args, "name") or "")}
