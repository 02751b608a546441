"""The OpenAPI 3.1 description of the agent-facing API (served at ``/openapi.json``)."""

from __future__ import annotations

from typing import Any

_ERROR = {"$ref": "#/components/schemas/Error"}
_GRANT = {
    "type": "object",
    "additionalProperties": False,
    "required": ["action", "resource"],
    "properties": {"action": {"type": "string", "maxLength": 64}, "resource": {"type": "string"}},
}


def _errors(*codes: int) -> dict[str, Any]:
    return {
        str(c): {"description": "error", "content": {"application/json": {"schema": _ERROR}}} for c in codes
    }


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Tether broker API", "version": "1"},
    "components": {
        "securitySchemes": {
            "svid": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT-SVID"},
            "task": {"type": "http", "scheme": "bearer", "bearerFormat": "txntoken+jwt"},
        },
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            },
            "Grant": _GRANT,
            "Decision": {
                "type": "object",
                "required": ["decision", "decision_id", "reasons", "policy_version"],
                "properties": {
                    "decision": {"enum": ["allow", "deny", "approval_required"]},
                    "decision_id": {"type": "string"},
                    "reasons": {"type": "array", "items": {"type": "object"}},
                    "policy_version": {"type": "string"},
                    "approval_id": {"type": "string"},
                    "code": {"type": "string"},
                    "credential": {"type": "object"},
                },
            },
        },
    },
    "paths": {
        "/v1/tasks": {
            "post": {
                "summary": "Open a task (or redeem a delegation) with the agent's JWT-SVID",
                "security": [{"svid": []}],
                "requestBody": _json(
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "intent": {"type": "string"},
                            "description": {"type": "string", "maxLength": 2000},
                            "scope": {"type": "array", "items": _GRANT, "maxItems": 100},
                            "ttl_seconds": {"type": "integer", "minimum": 1},
                            "delegation": {"type": "string"},
                        },
                    }
                ),
                "responses": {"201": {"description": "task opened"}, **_errors(400, 401, 403, 409, 413, 503)},
            }
        },
        "/v1/tasks/{task_id}": {
            "get": {
                "summary": "A task's state, scope, parent and children",
                "security": [{"task": []}],
                "parameters": [
                    {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {"200": {"description": "the task"}, **_errors(401, 403, 404)},
            }
        },
        "/v1/tasks/{task_id}/delegations": {
            "post": {
                "summary": "Offer part of a task to one child agent (single use, short-lived)",
                "security": [{"task": []}],
                "parameters": [
                    {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "requestBody": _json(
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["child", "scope", "ttl_seconds"],
                        "properties": {
                            "child": {"type": "string"},
                            "scope": {"type": "array", "items": _GRANT},
                            "ttl_seconds": {"type": "integer", "minimum": 1},
                        },
                    }
                ),
                "responses": {"201": {"description": "delegation created"}, **_errors(400, 401, 403, 409)},
            }
        },
        "/v1/tasks/{task_id}/close": {
            "post": {
                "summary": "Close a task and every descendant",
                "security": [{"task": []}],
                "parameters": [
                    {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {"200": {"description": "closed"}, **_errors(401, 403, 404)},
            }
        },
        "/v1/authorize": {
            "post": {
                "summary": "Decide one action now",
                "security": [{"task": []}],
                "requestBody": _json(
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["action", "resource"],
                        "properties": {
                            "action": {"type": "string"},
                            "resource": {"type": "string"},
                            "arguments": {"type": "object"},
                            "context": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {"method": {"type": "string"}, "path": {"type": "string"}},
                            },
                        },
                    }
                ),
                "responses": {
                    "200": {
                        "description": "the decision",
                        **_json({"$ref": "#/components/schemas/Decision"}),
                    },
                    **_errors(400, 401, 413, 503),
                },
            }
        },
        "/.well-known/jwks.json": {
            "get": {
                "summary": "The broker's public signing keys",
                "responses": {"200": {"description": "JWKS"}},
            }
        },
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "ok"}}}},
        "/readyz": {
            "get": {
                "summary": "Readiness (store reachable)",
                "responses": {"200": {"description": "ready"}, "503": {"description": "not"}},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus text metrics (addresses in `metrics.allow` only)",
                "responses": {
                    "200": {
                        "description": "metrics",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "403": {"description": "`metrics_forbidden`: the address is not in `metrics.allow`"},
                },
            }
        },
    },
}
