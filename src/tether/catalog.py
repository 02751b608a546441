"""The catalog: services, tools and datasets with the attributes policy reads.

A catalog file (YAML) looks like::

    intents:
      support.triage: "read tickets and customer records to answer a ticket"
    services:
      - id: crm
        sensitivity: 2            # 0 public, 1 internal, 2 confidential, 3 restricted
        environment: prod
        egress: internal          # internal | external
        owner: team-support
        connector: jwt            # optional: how credentials for it are minted
    tools:
      - {id: crm.lookup, service: crm}
      - id: files.read_file
        service: files
        arguments:                # typed, canonicalized before policy (tether.arguments)
          path: {type: path, roots: [/data/public, /data/shared]}
    datasets:
      - {id: crm.customers, service: crm, sensitivity: 3}

Tools and datasets inherit any attribute they do not set from their service;
``arguments`` merge by name (a tool's declaration of an argument replaces its service's).
Every error names the file and the entry at fault.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tether.arguments import ArgSpec, parse_arg_specs
from tether.errors import ConfigError, InvalidRequest
from tether.model import Grant

SENSITIVITY_NAMES = ("public", "internal", "confidential", "restricted")
KINDS = ("service", "tool", "dataset")
CEDAR_TYPE = {"service": "Tether::Service", "tool": "Tether::Tool", "dataset": "Tether::Dataset"}
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
_INTENT_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Resource:
    id: str
    kind: str  # service | tool | dataset
    service: str  # the owning service id (its own id for a service)
    sensitivity: int
    environment: str
    egress: str
    owner: str
    connector: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)  # connector-specific settings
    arguments: Mapping[str, ArgSpec] = field(default_factory=dict)  # typed arguments, by name

    @property
    def cedar_uid(self) -> dict[str, str]:
        return {"type": CEDAR_TYPE[self.kind], "id": self.id}

    def cedar_entity(self) -> dict[str, Any]:
        parents = [] if self.kind == "service" else [{"type": CEDAR_TYPE["service"], "id": self.service}]
        return {
            "uid": self.cedar_uid,
            "attrs": {
                "kind": self.kind,
                "sensitivity": self.sensitivity,
                "environment": self.environment,
                "egress": self.egress,
                "owner": self.owner,
            },
            "parents": parents,
        }


@dataclass(frozen=True, slots=True)
class Catalog:
    resources: Mapping[str, Resource]
    intents: Mapping[str, str]
    source: str = "<memory>"

    def get(self, resource_id: str) -> Resource | None:
        return self.resources.get(resource_id)

    def covers(self, grant_resource: str, resource_id: str) -> bool:
        """True when a scope entry naming ``grant_resource`` covers ``resource_id``."""
        if grant_resource == resource_id:
            return True
        target = self.resources.get(resource_id)
        granted = self.resources.get(grant_resource)
        return (
            target is not None
            and granted is not None
            and granted.kind == "service"
            and target.service == granted.id
        )

    def grant_within(self, grant: Grant, scope: Iterable[Grant]) -> bool:
        """True when ``grant`` is no wider than some entry of ``scope``."""
        return any(g.action == grant.action and self.covers(g.resource, grant.resource) for g in scope)

    def entities_json(self) -> str:
        return json.dumps([r.cedar_entity() for r in self.resources.values()])


def _require(entry: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in entry:
        raise ConfigError(f"{where}: missing field `{key}`", code="catalog_invalid")
    return entry[key]


def _parse_entry(raw: Any, kind: str, where: str, services: Mapping[str, Resource]) -> Resource:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping", code="catalog_invalid")
    allowed = {
        "id",
        "service",
        "sensitivity",
        "environment",
        "egress",
        "owner",
        "connector",
        "options",
        "description",
        "arguments",
    }
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown field `{unknown[0]}`", code="catalog_invalid")
    rid = _require(raw, "id", where)
    if not isinstance(rid, str) or not _ID_RE.match(rid):
        raise ConfigError(f"{where}: invalid id `{rid}`", code="catalog_invalid")
    parent: Resource | None = None
    if kind == "service":
        service_id = rid
    else:
        service_id = _require(raw, "service", f"{where} ({rid})")
        parent = services.get(service_id)
        if parent is None:
            raise ConfigError(f"{where} ({rid}): unknown service `{service_id}`", code="catalog_invalid")

    def attr(name: str, default: Any) -> Any:
        if name in raw:
            return raw[name]
        if parent is not None:
            return getattr(parent, name)
        return default

    sensitivity = attr("sensitivity", 1)
    if isinstance(sensitivity, str) and sensitivity in SENSITIVITY_NAMES:
        sensitivity = SENSITIVITY_NAMES.index(sensitivity)
    if isinstance(sensitivity, bool) or not isinstance(sensitivity, int) or not 0 <= sensitivity <= 3:
        raise ConfigError(
            f"{where} ({rid}): `sensitivity` must be 0-3 or one of {', '.join(SENSITIVITY_NAMES)}",
            code="catalog_invalid",
        )
    egress = attr("egress", "internal")
    if egress not in ("internal", "external"):
        raise ConfigError(f"{where} ({rid}): `egress` must be internal or external", code="catalog_invalid")
    environment = str(attr("environment", "dev"))
    owner = str(attr("owner", ""))
    connector = raw.get("connector", parent.connector if parent else None)
    options = raw.get("options", parent.options if parent else {})
    if not isinstance(options, dict):
        raise ConfigError(f"{where} ({rid}): `options` must be a mapping", code="catalog_invalid")
    try:
        declared = parse_arg_specs(raw.get("arguments"), f"{where} ({rid})")
    except InvalidRequest as exc:
        raise ConfigError(exc.message, code="catalog_invalid") from None
    arguments = {**(parent.arguments if parent else {}), **declared}
    return Resource(
        rid, kind, service_id, sensitivity, environment, egress, owner, connector, options, arguments
    )


def parse_catalog(doc: Any, source: str = "<memory>") -> Catalog:
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: the catalog must be a mapping", code="catalog_invalid")
    unknown = sorted(set(doc) - {"intents", "services", "tools", "datasets"})
    if unknown:
        raise ConfigError(f"{source}: unknown section `{unknown[0]}`", code="catalog_invalid")
    intents_raw = doc.get("intents") or {}
    if not isinstance(intents_raw, dict):
        raise ConfigError(f"{source}: `intents` must map labels to descriptions", code="catalog_invalid")
    for label in intents_raw:
        if not isinstance(label, str) or not _INTENT_RE.match(label):
            raise ConfigError(f"{source}: invalid intent label `{label}`", code="catalog_invalid")
    resources: dict[str, Resource] = {}
    services: dict[str, Resource] = {}
    for section, kind in (("services", "service"), ("tools", "tool"), ("datasets", "dataset")):
        entries = doc.get(section) or []
        if not isinstance(entries, list):
            raise ConfigError(f"{source}: `{section}` must be a list", code="catalog_invalid")
        for i, raw in enumerate(entries):
            res = _parse_entry(raw, kind, f"{source}: {section}[{i}]", services)
            if res.id in resources:
                raise ConfigError(
                    f"{source}: {section}[{i}]: duplicate id `{res.id}`", code="catalog_invalid"
                )
            resources[res.id] = res
            if kind == "service":
                services[res.id] = res
    return Catalog(resources, {str(k): str(v or "") for k, v in intents_raw.items()}, source)


def load_catalog(path: Path) -> Catalog:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read catalog `{path}`: {exc.strerror}", code="catalog_invalid") from exc
    try:
        # The safe loader, in C when PyYAML was built with libyaml (every broker start reads this).
        doc = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}", code="catalog_invalid") from exc
    return parse_catalog(doc, str(path))
