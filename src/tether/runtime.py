"""Composition root: build every component of a broker from validated settings.

``Runtime.start`` is what ``tether serve`` and the tests call; it fails before listening
when the config, catalog, policy set, store or master key is wrong, with the error
naming what to fix.

This is the one place that knows every layer. It builds the :class:`Core` (store, keys,
audit chain, policy engine, catalog, trust bundles, broker) and then each layer from the
core, in order — identity, credentials, audit, gateway, console — each layer's ``build`` getting
exactly the components it needs and returning what it made; the :class:`Runtime` holds
all of it as typed fields (no service locator, nothing registered by importing a
module). Admin operations are a per-runtime table (:attr:`Core.operations`), so two
runtimes in one process never share operations, routes, jobs or audit listeners. The
layering this sits on is described in ``docs/architecture.md``.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.audit import event as ev
from tether.audit.chain import AuditChain
from tether.broker import Broker, Clock
from tether.catalog import Catalog, load_catalog
from tether.config import CONFIG_FILE, Settings
from tether.errors import PolicyError
from tether.identity.keys import KeyRing, load_master_key
from tether.identity.svid import SvidVerifier, TrustBundles
from tether.leader import Leadership
from tether.policy.analysis import PolicyWarning, load_checked
from tether.policy.engine import PolicyEngine
from tether.replicas import Replica
from tether.store.db import Database
from tether.tokens import TaskTokens

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from tether.audit.checkpoint import CheckpointWriter
    from tether.audit.masking import Masker
    from tether.credentials.wiring import CredentialsRuntime
    from tether.gateway.http import HttpGateway
    from tether.gateway.pins import ToolPins
    from tether.identity.service import IdentityService
    from tether.identity.workload_api import WorkloadApi
    from tether.oauth.server import OAuthServer
    from tether.server.admin import OpHandler
    from tether.server.console import Console

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


@dataclass
class Core:
    """The broker and what it is built from: what every layer is built from."""

    settings: Settings
    db: Database
    keys: KeyRing
    audit: AuditChain
    engine: PolicyEngine
    catalog: Catalog
    bundles: TrustBundles
    svids: SvidVerifier
    broker: Broker
    #: Starlette routes the layers add (served next to the core API).
    routes: list[BaseRoute] = field(default_factory=list)
    #: Cluster-wide jobs, run by the periodic loop every couple of seconds in a worker
    #: thread, and only by the process holding the leader lease (``tether.leader``).
    periodic: list[Callable[[], object]] = field(default_factory=list)
    #: Jobs every process runs for its own state (its audit chain's checkpoints).
    node_periodic: list[Callable[[], object]] = field(default_factory=list)
    #: This process's claim on the leader lease; ``None`` only in a bare core.
    leadership: Leadership | None = None
    #: Called on shutdown, last added first.
    on_close: list[Callable[[], object]] = field(default_factory=list)
    #: This runtime's admin operations, by name (``server.admin``); filled by the layers.
    operations: dict[str, OpHandler] = field(default_factory=dict)
    #: What analysis found in the policy set of the last reload (advice, not errors).
    policy_warnings: tuple[PolicyWarning, ...] = ()

    @classmethod
    def build(cls, settings: Settings, *, clock: Clock | None = None, **bundle_options: Any) -> Core:
        catalog = load_catalog(settings.catalog_path)
        engine = PolicyEngine()
        engine.set_catalog(catalog)
        bundle = engine.reload(settings.policy_path)  # raises: a bad set refuses to start
        db = Database(settings.store_url, timeout_ms=settings.limits.store_timeout_ms)
        db.migrate()
        db.start_checkpoints()
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
        core = cls(settings, db, keys, audit, engine, catalog, bundles, svids, broker)
        core.on_close.append(replica.start())  # released last, after every layer stopped
        core.leadership = Leadership(db, settings.node_id)
        core.on_close.append(core.leadership.start())  # freed after the layers stopped their jobs
        core.periodic.append(broker.expire_approvals)  # unanswered approvals end in `expired`
        core.periodic.append(broker.drop_old_call_counts)
        return core

    def is_leader(self) -> bool:
        """Whether this process runs the cluster-wide periodic jobs now."""
        return self.leadership is None or self.leadership.is_leader()

    def add_operations(self, table: Mapping[str, OpHandler]) -> None:
        """Add a layer's admin operations; a name two layers claim is a wiring bug."""
        clash = sorted(set(table) & set(self.operations))
        if clash:
            raise ValueError(f"admin operations defined twice: {clash}")
        self.operations.update(table)

    def reload_policy(self, *, strict: bool = False, expect_version: str | None = None) -> str:
        """Reload the policy directory; on error the old set stays and the failure is audited.

        The new set is analyzed first (tether.policy.analysis): warnings are logged and
        recorded in the `policy.loaded` event; with ``strict`` they refuse the set. With
        ``expect_version`` (the set another worker just put in force) a directory that
        reads as anything else is refused too, so workers never settle on different sets.
        """
        old = self.engine.bundle.version
        try:
            bundle, analysis = load_checked(
                self.settings.policy_path, self.engine.schema, self.engine.catalog, strict=strict
            )
            if expect_version is not None and bundle.version != expect_version:
                raise PolicyError(
                    f"the policy directory changed during the reload: it now reads as {bundle.version}, "
                    f"not {expect_version}; run the reload again"
                )
            self.engine.set_bundle(bundle)
        except PolicyError as exc:
            log.error("policy reload failed, keeping %s: %s", old, exc.message)
            with self.audit.unit() as u:
                u.emit(ev.POLICY_RELOAD_FAILED, {"error": exc.message, "kept_version": old})
            raise
        for w in analysis.warnings:
            log.warning("policy %s: %s", bundle.version, w.describe())
        self.policy_warnings = analysis.warnings
        payload: dict[str, Any] = {
            "version": bundle.version,
            "files": list(bundle.files),
            "previous_version": old,
        }
        if analysis.warnings:
            payload["warnings"] = [w.to_dict() for w in analysis.warnings]
        with self.audit.unit() as u:
            u.emit(ev.POLICY_LOADED, payload)
        return bundle.version

    def close(self) -> None:
        for fn in reversed(self.on_close):
            try:
                fn()
            except Exception:
                log.exception("shutdown hook failed")
        self.audit.close()
        self.db.dispose()


@dataclass(kw_only=True)
class Runtime(Core):
    """A running broker: the core plus every layer, as typed fields."""

    #: Who is calling (SVIDs, OIDC workloads, delegators) and DPoP binding at task open.
    identity: IdentityService
    #: The local Workload API (SVIDs for processes on this host) and its socket, if served.
    workload_api: WorkloadApi
    workload_socket: Path | None
    #: Leases, connectors, the revocation feed, secrets, the reaper, introspection.
    credentials: CredentialsRuntime
    #: The audit payload masker (first filter on the chain) and the checkpoint writer.
    masker: Masker
    checkpoints: CheckpointWriter
    #: Pinned MCP tool definitions, and the in-process HTTP gateway when configured.
    pins: ToolPins
    http_gateway: HttpGateway | None
    #: The operator console under ``/console`` (``None`` when ``console.enabled`` is off).
    console: Console | None
    #: The OAuth authorization server (``None`` unless ``oauth.enabled``).
    oauth: OAuthServer | None = None

    @classmethod
    def start(cls, settings: Settings, *, clock: Clock | None = None, **bundle_options: Any) -> Runtime:
        # Imported here, not at the top: each layer's wiring imports the core's types, and
        # the composition root is the only module allowed to see every layer.
        from tether import metrics, tracing
        from tether.audit import wiring as audit_wiring
        from tether.credentials import wiring as credentials_wiring
        from tether.gateway import wiring as gateway_wiring
        from tether.identity import wiring as identity_wiring
        from tether.oauth import wiring as oauth_wiring
        from tether.server import console as console_layer
        from tether.server import ops as server_ops
        from tether.server import policy_ops

        core = Core.build(settings, clock=clock, **bundle_options)
        try:
            metrics.install(core)  # counters fed from the audit chain and the store's errors
            stop_tracing = tracing.install(settings)  # OTLP export of request spans, when configured
            if stop_tracing is not None:
                core.on_close.append(stop_tracing)
            core.add_operations(server_ops.OPERATIONS)
            core.add_operations(policy_ops.OPERATIONS)
            policy_ops.start_shadow(core)  # `[policy] shadow`: a bad directory refuses to start
            ident = identity_wiring.build(core)
            creds = credentials_wiring.build(core)
            metrics.follow_feed(core, creds.feed)  # this replica's revocation-feed lag
            logs = audit_wiring.build(core)
            gw = gateway_wiring.build(core)
            console = console_layer.build(core)
            oauth = oauth_wiring.build(core, ident.service, console)
        except BaseException:
            core.close()  # a layer that failed to build leaves no thread or socket behind
            raise
        return cls(
            **{f: getattr(core, f) for f in _CORE_FIELDS},
            identity=ident.service,
            workload_api=ident.workload_api,
            workload_socket=ident.workload_socket,
            credentials=creds,
            masker=logs.masker,
            checkpoints=logs.checkpoints,
            pins=gw.pins,
            http_gateway=gw.http,
            console=console,
            oauth=oauth,
        )


_CORE_FIELDS = tuple(f.name for f in fields(Core))
