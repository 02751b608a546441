"""The audit layer's run-time parts: masking on the chain, periodic and final signed checkpoints.

Built by ``Runtime.start``, which keeps the masker as ``Runtime.masker`` (connectors
register secrets they must never see logged with ``masker.register_secret(value)``) and
the checkpoint writer as ``Runtime.checkpoints``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tether.audit.checkpoint import CheckpointWriter
from tether.audit.masking import Masker, salt_from_master_key
from tether.identity.keys import load_master_key

if TYPE_CHECKING:
    from tether.runtime import Core


@dataclass(frozen=True)
class AuditLayer:
    masker: Masker
    checkpoints: CheckpointWriter


def build(rt: Core) -> AuditLayer:
    # Typed masks in decision inputs are digested with a key from the master key, so
    # `tether policy replay` (which holds it) can match them against policy literals.
    salt = salt_from_master_key(load_master_key(rt.settings.state_dir))
    masker = Masker.from_settings(rt.settings.audit, salt=salt)
    # First in line: later filters (if any) only ever see masked payloads.
    rt.audit.filters.insert(0, masker)
    writer = CheckpointWriter(rt.db, rt.audit, rt.keys, rt.settings.audit, rt.settings.state_dir)
    rt.node_periodic.append(writer.tick)  # this process's own chain: every process
    rt.on_close.append(lambda: writer.tick(force=True))
    return AuditLayer(masker, writer)
