"""The inventory of legacy secrets under the broker: origin, exposures, use and rotation.

Rows live in ``secret_inventory`` next to the encrypted values (``credential_secrets``);
last use through the gateway is read from the ``inject`` leases minted for the service.
"""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection

from tether.store import credentials_tables as ct

_inv = ct.secret_inventory


def record_import(
    conn: Connection,
    *,
    name: str,
    service: str,
    kind: str,
    fingerprint: str,
    exposures: list[dict[str, Any]],
    first_seen: float | None,
    rotation: dict[str, Any] | None,
) -> None:
    values = {
        "service": service,
        "kind": kind,
        "fingerprint": fingerprint,
        "exposures": json.dumps(exposures, sort_keys=True),
        "first_seen": first_seen,
        "imported_at": time.time(),
        "rotation": json.dumps(rotation, sort_keys=True) if rotation else None,
    }
    done = conn.execute(update(_inv).where(_inv.c.name == name).values(**values)).rowcount
    if not done:
        conn.execute(insert(_inv).values(name=name, rotation_status="never", **values))


def get(conn: Connection, name: str) -> dict[str, Any] | None:
    row = conn.execute(select(_inv).where(_inv.c.name == name)).first()
    return _view(dict(row._mapping)) if row is not None else None


def set_rotation(
    conn: Connection, name: str, status: str, error: str | None, fingerprint: str | None
) -> None:
    values: dict[str, Any] = {"rotation_status": status, "rotation_error": (error or None) and error[:512]}
    if status == "ok" or status == "retire_failed":
        values["rotated_at"] = time.time()
    if fingerprint:
        values["fingerprint"] = fingerprint
    conn.execute(update(_inv).where(_inv.c.name == name).values(**values))


def _view(row: dict[str, Any]) -> dict[str, Any]:
    row["exposures"] = json.loads(row["exposures"])
    row["rotation"] = json.loads(row["rotation"]) if row["rotation"] else None
    return row


def listing(conn: Connection, now: float | None = None) -> list[dict[str, Any]]:
    """Every secret the store holds, imported (inventoried) or set directly."""
    now = time.time() if now is None else now
    inv = {r["name"]: _view(dict(r)) for r in conn.execute(select(_inv)).mappings()}
    stored = {
        r["name"]: dict(r)
        for r in conn.execute(
            select(ct.secrets.c.name, ct.secrets.c.created_at, ct.secrets.c.updated_at)
        ).mappings()
    }
    used = {
        r["audience"]: r["last"]
        for r in conn.execute(
            select(ct.leases.c.audience, func.max(ct.leases.c.issued_at).label("last"))
            .where(ct.leases.c.connector == "inject")
            .group_by(ct.leases.c.audience)
        ).mappings()
    }
    out = []
    for name in sorted(set(inv) | set(stored)):
        i = inv.get(name) or {}
        s = stored.get(name) or {}
        service = i.get("service") or name
        born = (
            min(x for x in (i.get("first_seen"), s.get("created_at"), i.get("imported_at")) if x)
            if (i or s)
            else now
        )
        value_since = i.get("rotated_at") or s.get("updated_at") or born
        live = [e for e in i.get("exposures", []) if e.get("live")]
        out.append(
            {
                "name": name,
                "service": service,
                "kind": i.get("kind"),
                "fingerprint": i.get("fingerprint"),
                "brokered": name in stored,
                "inventoried": bool(i),
                "age_days": round((now - born) / 86400, 1),
                "value_age_days": round((now - value_since) / 86400, 1),
                "last_used": used.get(service),
                "rotation": (i.get("rotation") or {}).get("kind"),
                "rotation_spec": i.get("rotation"),
                "value_since": value_since,
                "rotation_status": i.get("rotation_status", "never"),
                "rotation_error": i.get("rotation_error"),
                "rotated_at": i.get("rotated_at"),
                "exposures": i.get("exposures", []),
                "exposures_live": len(live),
            }
        )
    return out


_seen = ct.legacy_sightings


def record_sightings(conn: Connection, name: str, clients: list[dict[str, Any]], now: float) -> None:
    """Fold one ``pg_stat_activity`` snapshot (``pgshared.usage()["clients"]``) into the history."""
    for c in clients:
        key = {
            "name": name,
            "database": c["database"][:128],
            "client": c["client"][:256],
            "application": c["application"][:256],
        }
        where = [getattr(_seen.c, k) == v for k, v in key.items()]
        row = conn.execute(select(_seen.c.sessions_max).where(*where)).first()
        if row is None:
            conn.execute(
                insert(_seen).values(**key, first_seen=now, last_seen=now, sessions_max=c["sessions"])
            )
        else:
            conn.execute(
                update(_seen)
                .where(*where)
                .values(last_seen=now, sessions_max=max(int(row[0]), c["sessions"]))
            )


def sightings(conn: Connection, name: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(_seen).where(_seen.c.name == name).order_by(_seen.c.last_seen.desc())
    ).mappings()
    return [{k: v for k, v in r.items() if k != "name"} for r in rows]


def shared_logins(conn: Connection) -> list[dict[str, Any]]:
    """Imported shared PostgreSQL logins not yet retired (what the sampler watches)."""
    rows = conn.execute(select(_inv).where(_inv.c.rotation_status != "retired")).mappings()
    out = []
    for r in rows:
        spec = json.loads(r["rotation"]) if r["rotation"] else {}
        if spec.get("kind") == "postgres-shared":
            out.append(
                {
                    "name": r["name"],
                    "service": spec["service"],
                    "login": spec["login"],
                    "since": r["imported_at"],
                }
            )
    return out
