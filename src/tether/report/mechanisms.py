"""The Tether mechanisms a control mapping may name.

A mapping file cannot invent a mechanism: each name here is a part of Tether that
exists, with the page of the docs that explains it. Adding a mechanism means building
it first, then adding it here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Mechanism:
    name: str
    title: str
    doc: str  # docs/ page (and anchor) that describes it


_ALL = (
    Mechanism(
        "workload-identity", "agents prove what they are (SPIFFE: kernel, SPIRE or OIDC)", "identity.md"
    ),
    Mechanism(
        "workload-registry", "every local agent is a registration entry an operator added", "identity.md"
    ),
    Mechanism("sender-constraint", "task tokens bound to the agent's key (DPoP, RFC 9449)", "identity.md"),
    Mechanism(
        "task-scope",
        "a task names its intent and the only grants it may ever use",
        "../README.md#how-one-action-flows",
    ),
    Mechanism(
        "task-ttl-cap", "task lifetime capped by `tasks.max_ttl_seconds`", "../README.md#how-one-action-flows"
    ),
    Mechanism(
        "runtime-policy", "every action is a Cedar decision at the moment of action", "../README.md#policies"
    ),
    Mechanism("taint-rule", "after a read of confidential data, no external egress", "../README.md#policies"),
    Mechanism(
        "environment-isolation",
        "a resource of another environment is never reachable",
        "../README.md#policies",
    ),
    Mechanism("call-burst-rule", "a burst of calls from one task is stopped", "../README.md#policies"),
    Mechanism(
        "approvals", "a human's yes bound to task, action, resource and arguments", "../README.md#policies"
    ),
    Mechanism(
        "delegation-attenuation",
        "a sub-agent's task is never wider or longer than its parent's",
        "../README.md#how-one-action-flows",
    ),
    Mechanism(
        "delegator-chain",
        "the human on whose behalf a task runs is on its record",
        "../README.md#how-one-action-flows",
    ),
    Mechanism(
        "scoped-credentials", "one audience, one purpose, expiry no later than the task's", "credentials.md"
    ),
    Mechanism("revoke-on-end", "a task's end revokes every lease of its tree", "credentials.md"),
    Mechanism(
        "kill-switch",
        "`tether revoke` ends tasks by task, agent, delegator or all",
        "../README.md#how-one-action-flows",
    ),
    Mechanism(
        "secret-injection",
        "upstream secrets are injected at the gateway, never given to agents",
        "gateways.md",
    ),
    Mechanism(
        "audit-masking", "configured paths, headers and patterns are masked in the audit log", "audit.md"
    ),
    Mechanism("audit-chain", "one hash-chained audit log of decisions, credentials and calls", "audit.md"),
    Mechanism("signed-checkpoints", "signed chain heads, verifiable offline", "audit.md"),
    Mechanism("gateway-enforcement", "HTTP and MCP gateways forward only authorized calls", "gateways.md"),
    Mechanism("tool-pinning", "an MCP tool whose definition changes is held back", "gateways.md"),
    Mechanism(
        "fail-closed",
        "any error in verification, policy, storage or audit denies",
        "../README.md#how-one-action-flows",
    ),
    Mechanism("compliance-report", "this report: evidence computed from the deployment, signed", "report.md"),
)

MECHANISMS: dict[str, Mechanism] = {m.name: m for m in _ALL}

__all__ = ["MECHANISMS", "Mechanism"]
