"""Wiring: build every component of a broker from validated settings.

``Runtime.start`` is what ``tether serve`` and the tests call; it fails before listening
when the config, catalog, policy set, store or master key is wrong, with the error
naming what to fix.
"""

from __future__ import annotations

import importlib
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from tether.audit import event as ev
from tether.audit.chain import AuditChain
from tether.broker import Broker, Clock
from tether.catalog import Catalog, load_catalog
from tether.config import CONFIG_FILE, Settings
from tether.errors import PolicyError
from tether.identity.keys import KeyRing, load_master_key
from tether.identity.svid import SvidVerifier, TrustBundles
from tether.policy.engine import PolicyEngine
from tether.replicas import Replica
from tether.store.db import Database
from tether.tokens import TaskTokens

log = logging.getLogger("tether")

DEFAULT_CONFIG = """\
# Tether broker settings. Every key can be overridden by an environment variable:
# TETHER_<KEY>, nested with a double underscore (TETHER_TASKS__MAX_TTL_SECONDS=600).
listen = "127.0.0.1:8421"
# The example catalog and policies below describe a support team's production stack in
# the `support.example` trust domain: change these two together with them. In `prod`,
# task tokens must be DPoP-bound unless `[identity] dpop` says otherwise.
environment = "prod"
trust_domain = "support.example"
node_id = "node-1"            # names this replica's audit chain; unique per replica
# store = "postgresql://tether@db.internal/tether"   # default: SQLite in this directory
policy_dir = "policies"
catalog_file = "catalog.yaml"

[tasks]
max_ttl_seconds = 3600
max_depth = 3
delegation_ttl_seconds = 300

[credentials]
default_ttl_seconds = 300

[approvals]
ttl_seconds = 900

# Trust JWT-SVIDs from SPIRE or another SPIFFE issuer:
# [[trust_bundles]]
# trust_domain = "prod.example.org"
# jwks_file = "spire-bundle.jwks.json"
"""


def init_state_dir(state_dir: Path, *, force: bool = False) -> list[Path]:
    """Create a state directory with a config, the example catalog and policies."""
    state_dir.mkdir(parents=True, exist_ok=True)
    state_dir.chmod(0o700)
    written: list[Path] = []
    cfg = state_dir / CONFIG_FILE
    if force or not cfg.exists():
        cfg.write_text(DEFAULT_CONFIG)
        written.append(cfg)
    examples = resources.files("tether") / "examples"
    catalog = state_dir / "catalog.yaml"
    if force or not catalog.exists():
        catalog.write_text((examples / "catalog.yaml").read_text())
        written.append(catalog)
    for folder, suffix in (("policies", ".cedar"), ("policy_tests", ".yaml")):
        target = state_dir / folder
        if force or not target.exists():
            if target.exists():
                shutil.rmtree(target)
            target.mkdir()
            for item in (examples / folder).iterdir():
                if item.name.endswith(suffix):
                    (target / item.name).write_text(item.read_text())
            written.append(target)
    return written


#: Modules that extend a runtime: each defines ``install(rt: Runtime) -> None`` and is
#: imported at start if present. They add broker hooks, HTTP routes, admin operations
#: and periodic jobs without the core knowing them.
EXTENSION_MODULES = (
    "tether.identity.wiring",
    "tether.credentials.wiring",
    "tether.audit.wiring",
    "tether.gateway.wiring",
    "tether.server.console",
)


def _load_extensions() -> list[Callable[[Runtime], None]]:
    installers = []
    for name in EXTENSION_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise  # the extension exists but one of its imports is missing: say so
            continue
        installers.append(module.install)
    return installers


@dataclass
class Runtime:
    settings: Settings
    db: Database
    keys: KeyRing
    audit: AuditChain
    engine: PolicyEngine
    catalog: Catalog
    bundles: TrustBundles
    svids: SvidVerifier
    broker: Broker
    #: Starlette routes added by extensions (served next to the core API).
    routes: list[Any] = field(default_factory=list)
    #: Jobs run by the reaper loop every couple of seconds, in a worker thread.
    periodic: list[Callable[[], object]] = field(default_factory=list)
    #: Called on shutdown, last added first.
    on_close: list[Callable[[], object]] = field(default_factory=list)
    #: Anything an extension wants to keep (e.g. ``extras["credentials"]``).
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(cls, settings: Settings, *, clock: Clock | None = None, **bundle_options: Any) -> Runtime:
        catalog = load_catalog(settings.catalog_path)
        engine = PolicyEngine()
        engine.set_catalog(catalog)
        bundle = engine.reload(settings.policy_path)  # raises: a bad set refuses to start
        db = Database(settings.store_url, timeout_ms=settings.limits.store_timeout_ms)
        db.migrate()
        replica = Replica.claim(db, settings.node_id)  # refuses a node_id another live process holds
        keys = KeyRing(
            db,
            load_master_key(settings.state_dir),
            rotate_after=settings.keys.rotate_after_seconds,
            overlap=settings.keys.overlap_seconds,
        )
        keys.ensure_current()
        audit = AuditChain(db, settings.node_id)
        bundles = TrustBundles.from_settings(settings.trust_bundles, settings.state_dir, **bundle_options)
        svids = SvidVerifier(
            bundles,
            settings.broker_audience,
            settings.limits.jwt_leeway_seconds,
            settings.limits.max_token_bytes,
        )
        tokens = TaskTokens(
            keys,
            issuer=settings.broker_issuer,
            audience=settings.broker_audience,
            leeway=settings.limits.jwt_leeway_seconds,
            max_bytes=settings.limits.max_token_bytes,
        )
        kwargs: dict[str, Any] = {"clock": clock} if clock else {}
        broker = Broker(settings, db, audit, engine, catalog, tokens, **kwargs)
        with audit.unit() as u:
            u.emit(
                ev.POLICY_LOADED,
                {"version": bundle.version, "files": list(bundle.files), "node": settings.node_id},
            )
        rt = cls(settings, db, keys, audit, engine, catalog, bundles, svids, broker)
        rt.on_close.append(replica.start())  # released last, after every extension stopped
        for install in _load_extensions():
            install(rt)
        return rt

    def reload_policy(self) -> str:
        """Reload the policy directory; on error the old set stays and the failure is audited."""
        old = self.engine.bundle.version
        try:
            bundle = self.engine.reload(self.settings.policy_path)
        except PolicyError as exc:
            log.error("policy reload failed, keeping %s: %s", old, exc.message)
            with self.audit.unit() as u:
                u.emit(ev.POLICY_RELOAD_FAILED, {"error": exc.message, "kept_version": old})
            raise
        with self.audit.unit() as u:
            u.emit(
                ev.POLICY_LOADED,
                {"version": bundle.version, "files": list(bundle.files), "previous_version": old},
            )
        return bundle.version

    def close(self) -> None:
        for fn in reversed(self.on_close):
            try:
                fn()
            except Exception:
                log.exception("shutdown hook failed")
        self.db.dispose()
