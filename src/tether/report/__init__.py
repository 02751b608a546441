"""Compliance report: evidence computed from a running deployment, mapped to controls.

``tether report`` reads the store (audit log, tasks, leases, registrations), the config
and the policy files, computes evidence for a time window, and evaluates the control
mapping shipped in ``controls.yaml`` (OWASP NHI Top 10 2025, OWASP Top 10 for Agentic
Applications 2026, CSA MAESTRO layers, NIST AI RMF 1.0, NIST SP 800-207). The JSON form
is signed with the broker's checkpoint key. See docs/report.md.
"""

from tether.report.build import build_report, collect, one_control
from tether.report.evidence import EVIDENCE, Evidence, compute
from tether.report.mapping import STATUSES, ControlMapping, evaluate, load_mapping, parse_mapping
from tether.report.signing import sign_report, verify_report

__all__ = [
    "EVIDENCE",
    "STATUSES",
    "ControlMapping",
    "Evidence",
    "build_report",
    "collect",
    "compute",
    "evaluate",
    "load_mapping",
    "one_control",
    "parse_mapping",
    "sign_report",
    "verify_report",
]
