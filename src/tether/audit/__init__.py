"""The tamper-evident audit log: events, per-writer hash chains, checkpoints, verification.

Public API: :class:`AuditChain` (the writer), :class:`Event`, :func:`capture_events`
(collect events in tests), :func:`verify_chains` / :func:`verify_database`,
:class:`Masker`, :func:`build_trace`. Exports live in ``tether.audit.export`` and
``tether.audit.otel`` (needs the ``otel`` extra).
"""

from tether.audit.chain import AuditChain, capture_events
from tether.audit.checkpoint import Checkpoint
from tether.audit.event import Event, canonical_json
from tether.audit.masking import Masker
from tether.audit.trace import build_trace
from tether.audit.verify import Break, VerifyReport, verify_chains, verify_database

__all__ = [
    "AuditChain",
    "Break",
    "Checkpoint",
    "Event",
    "Masker",
    "VerifyReport",
    "build_trace",
    "canonical_json",
    "capture_events",
    "verify_chains",
    "verify_database",
]
