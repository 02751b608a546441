"""Build the credentials layer from the core (called by ``Runtime.start``).

Adds the broker hooks (mint on allow, revoke on task end), the HTTP routes, the admin
operations, the reaper (a worker thread plus a periodic pass) and returns a
:class:`CredentialsRuntime` (``Runtime.credentials``) that in-process enforcement points
use: ``.feed`` (revocations since a cursor), ``.secrets``, ``.service``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tether.audit import event as ev
from tether.audit.event import Event
from tether.credentials import ops
from tether.credentials.api import routes
from tether.credentials.connectors.base import Connector
from tether.credentials.connectors.inject import InjectConnector
from tether.credentials.connectors.jwt import JwtConnector
from tether.credentials.connectors.postgres import PostgresConnector
from tether.credentials.introspection import Introspector
from tether.credentials.reaper import Reaper
from tether.credentials.revocation import Feed
from tether.credentials.secrets import SecretStore
from tether.credentials.service import Credentials
from tether.identity.keys import load_master_key
from tether.legacy import ops as legacy_ops  # secrets.import|inventory|rotate

if TYPE_CHECKING:
    from tether.runtime import Core

log = logging.getLogger("tether.credentials")

_TASK_ENDED = frozenset({ev.TASK_CLOSED, ev.TASK_EXPIRED, ev.TASK_REVOKED})
_ENDED = _TASK_ENDED | {ev.CREDENTIAL_REVOKED}


@dataclass
class CredentialsRuntime:
    service: Credentials
    feed: Feed
    secrets: SecretStore
    reaper: Reaper
    introspector: Introspector


def build(rt: Core) -> CredentialsRuntime:
    s = rt.settings
    secrets = SecretStore(rt.db, load_master_key(s.state_dir))
    tag = hashlib.sha256(s.broker_issuer.encode()).hexdigest()[:12]
    postgres = PostgresConnector(s.credentials.postgres, tag=tag)
    connectors: dict[str, Connector] = {
        "jwt": JwtConnector(rt.keys, s.broker_issuer),
        "inject": InjectConnector(secrets),
        "postgres": postgres,
    }
    feed = Feed(rt.db)
    service = Credentials(s, rt.db, rt.audit, connectors, feed, clock=rt.broker.clock)
    service.catalog = rt.catalog
    reaper = Reaper(service, rt.is_leader)  # the store-wide scans: one process at a time
    introspector = Introspector(rt, service)
    rt.broker.attach_credentials(service)
    rt.audit.filters.append(secrets.audit_filter())

    def on_event(e: Event) -> None:
        # After commit: followers and the revoker see the new rows when they look. This is
        # where a task's end wakes the reaper (start_revocations never does, inside the
        # transaction): the reaper's claim then cannot precede the commit, nor the cut.
        if e.type in _ENDED:
            if e.type in _TASK_ENDED and e.task_id:
                service.task_event(e.task_id)  # cut first: before the revoker is even woken
            feed.notify()
            service.wake()
        elif e.type == ev.CREDENTIAL_MINTED and e.lease_id:
            service.settled(e.lease_id)

    # This runtime's chain only, and ahead of the others: drift learns a closed task in a
    # store transaction of its own, which must not delay the cut.
    remove_listener = rt.audit.add_listener(on_event, first=True)
    rt.routes.extend(routes(rt, service, introspector))
    rt.periodic.append(reaper.periodic)
    rt.add_operations(ops.OPERATIONS)
    rt.add_operations(legacy_ops.OPERATIONS)
    rt.periodic.append(legacy_ops.scheduled_rotation(rt, secrets))  # `tether secrets import --rotate-every`
    rt.periodic.append(legacy_ops.sample_shared_logins(rt))  # `tether secrets pg-usage` history
    reaper.start()  # its first pass is the start-up reap; a slow connector never blocks start
    stop_listen = threading.Event()
    # Another replica's revocation commit wakes this reaper too (after that commit, like every
    # wake): if that replica dies before its cleanup, ours claims the leases at once. Our own
    # commits wake it from `on_event` above, after the cut.
    listener = feed.listen(stop_listen, on_commit=lambda: service.wake(), own=s.node_id)
    if listener is not None:

        def stop_listening() -> None:
            stop_listen.set()
            listener.join(5)

        rt.on_close.append(stop_listening)
    rt.on_close.append(remove_listener)
    rt.on_close.append(postgres.close)
    rt.on_close.append(service.cutter.stop)
    rt.on_close.append(reaper.stop)
    return CredentialsRuntime(service, feed, secrets, reaper, introspector)
