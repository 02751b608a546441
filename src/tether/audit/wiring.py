"""Runtime extension: masking on the chain, periodic and final signed checkpoints.

Imported by ``Runtime.start`` (``EXTENSION_MODULES``). Puts the masker at
``rt.extras["audit.masker"]`` so connectors can register secrets they must never see
logged (``masker.register_secret(value)``), and the checkpoint writer at
``rt.extras["audit.checkpoints"]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tether.audit.checkpoint import CheckpointWriter
from tether.audit.masking import Masker

if TYPE_CHECKING:
    from tether.runtime import Runtime


def install(rt: Runtime) -> None:
    masker = Masker.from_settings(rt.settings.audit)
    # First in line: later filters (if any) only ever see masked payloads.
    rt.audit.filters.insert(0, masker)
    rt.extras["audit.masker"] = masker
    writer = CheckpointWriter(rt.db, rt.audit, rt.keys, rt.settings.audit, rt.settings.state_dir)
    rt.extras["audit.checkpoints"] = writer
    rt.periodic.append(writer.tick)
    rt.on_close.append(lambda: writer.tick(force=True))
