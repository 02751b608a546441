"""Policy: Cedar decisions over tasks, catalog attributes, risk and call arguments.

Pure: no store, no network. :class:`PolicyEngine` holds parsed handles and decides;
:mod:`tether.policy.context` builds the context records; :func:`run_cases` runs
policy tests written as YAML data.
"""

from tether.policy.cases import CaseReport, CaseResult, PolicyCase, evaluate_cases, load_cases, run_cases
from tether.policy.context import (
    LIFECYCLE_ACTIONS,
    action_context,
    approval_context,
    context_from_mapping,
    grant_context,
    lifecycle_context,
    request_context,
    risk_context,
    task_context,
    task_context_from_task,
)
from tether.policy.engine import PolicyEngine, PolicyPrincipal, PolicyRequest, PolicyResult
from tether.policy.loader import PolicyBundle, PolicyInfo, empty_bundle, load_bundle, load_schema

__all__ = [
    "LIFECYCLE_ACTIONS",
    "CaseReport",
    "CaseResult",
    "PolicyBundle",
    "PolicyCase",
    "PolicyEngine",
    "PolicyInfo",
    "PolicyPrincipal",
    "PolicyRequest",
    "PolicyResult",
    "action_context",
    "approval_context",
    "context_from_mapping",
    "empty_bundle",
    "evaluate_cases",
    "grant_context",
    "lifecycle_context",
    "load_bundle",
    "load_cases",
    "load_schema",
    "request_context",
    "risk_context",
    "run_cases",
    "task_context",
    "task_context_from_task",
]
