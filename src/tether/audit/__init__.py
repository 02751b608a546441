"""The tamper-evident audit log: events, per-writer hash chains, verification."""

from tether.audit.chain import AuditChain, capture_events
from tether.audit.event import Event, canonical_json
from tether.audit.verify import VerifyReport, verify_chains

__all__ = ["AuditChain", "Event", "VerifyReport", "canonical_json", "capture_events", "verify_chains"]
