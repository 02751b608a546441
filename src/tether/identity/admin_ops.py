"""Admin operations for registration entries (``tether workload …``); audited."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tether.audit import event as ev
from tether.errors import InvalidRequest
from tether.identity import registrations
from tether.server.admin import OperationTable, Operator

if TYPE_CHECKING:
    from tether.runtime import Runtime

#: This module's admin operations (``Runtime.operations`` holds them once built).
OPERATIONS = OperationTable()
operation = OPERATIONS.operation


def _str(args: dict[str, Any], key: str) -> str:
    v = args.get(key)
    if not isinstance(v, str) or not v:
        raise InvalidRequest(f"missing argument `{key}`", code="missing_field", field=key)
    return v


@operation("workload.register")
def register(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
    spiffe_id = _str(args, "spiffe_id")
    selectors = registrations.validate_entry(spiffe_id, args.get("selectors") or [], rt.settings.trust_domain)
    attrs = registrations.parse_attributes(args.get("attributes") or {})
    with rt.audit.unit() as u:
        entry = registrations.insert_entry(u.conn, spiffe_id, selectors, attrs, op.name)
        u.emit(ev.WORKLOAD_REGISTERED, {"by": op.name, **entry.to_dict()}, agent=spiffe_id)
    return entry.to_dict()


@operation("workload.list")
def list_(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
    spiffe_id = args.get("spiffe_id")
    with rt.db.read() as conn:
        entries = registrations.list_entries(
            conn, spiffe_id=spiffe_id if isinstance(spiffe_id, str) else None
        )
    return [e.to_dict() for e in entries]


@operation("workload.show")
def show(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
    with rt.db.read() as conn:
        return registrations.get_entry(conn, _str(args, "entry_id")).to_dict()


@operation("workload.remove")
def remove(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
    with rt.audit.unit() as u:
        entry = registrations.delete_entry(u.conn, _str(args, "entry_id"))
        u.emit(ev.WORKLOAD_REMOVED, {"by": op.name, **entry.to_dict()}, agent=entry.spiffe_id)
    return entry.to_dict()
