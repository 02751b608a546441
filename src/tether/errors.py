"""Every failure Tether reports is a :class:`TetherError` with a stable ``code``.

Callers branch on ``code`` (or on the class), never on message text. Messages are
lowercase, name the field or value at fault in backticks, and say what to do.

    TetherError
    ├── InvalidRequest          400  malformed input, unknown field, bad SPIFFE ID
    │   ├── PayloadTooLarge     413  body over its limit
    │   └── HeadersTooLarge     431  request headers over their limit
    ├── Unauthenticated         401  missing, forged, expired or untrusted credential
    ├── Forbidden               403  authenticated but not allowed (scope, attenuation)
    ├── NotFound                404  unknown task, approval, delegation, route
    ├── MethodNotAllowed        405  a route that does not take this method
    ├── Conflict                409  state does not allow it (task closed, delegation used)
    ├── TooManyRequests         429  a per-caller cap reached (concurrent long-polls)
    ├── ConfigError             —    invalid configuration; the process refuses to start
    ├── PolicyError             —    policy set invalid; refused, previous set stays
    └── Unavailable             503  store, audit or connector down: fail closed

The wire carries two things from here: ``code`` — always a member of :class:`ErrorCode`
(a test scans the source for codes that are not) — and the HTTP status, which comes from
the class alone (:func:`http_status`). The server, the gateways and the SDK use this one
mapping in both directions (:func:`error_class`), so a status and its class never disagree.

This module is shared by the broker and the client: it imports nothing but the standard
library.
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar

__all__ = [
    "ConfigError",
    "Conflict",
    "ErrorCode",
    "Forbidden",
    "HeadersTooLarge",
    "InvalidRequest",
    "MethodNotAllowed",
    "NotFound",
    "PayloadTooLarge",
    "PolicyError",
    "TetherError",
    "TooManyRequests",
    "Unauthenticated",
    "Unavailable",
    "error_class",
    "http_status",
]


class ErrorCode(enum.StrEnum):
    """Every machine-readable code Tether puts on the wire (``{"code": ...}``).

    The values are a public contract: clients and enforcement points branch on them. Add
    a member for a new failure; never rename or reuse one. A ``StrEnum`` member *is* its
    string, so ``exc.code == "missing_field"`` and JSON encoding work unchanged.
    """

    ALG_NOT_ALLOWED = "alg_not_allowed"
    AMBIGUOUS_IDENTITY = "ambiguous_identity"
    APPROVAL_DECIDED = "approval_decided"
    APPROVAL_EXPIRED = "approval_expired"
    APPROVAL_NOT_FOUND = "approval_not_found"
    APPROVAL_REQUIRED = "approval_required"
    APPROVAL_TIMEOUT = "approval_timeout"
    APPROVAL_USED = "approval_used"
    ARGUMENT_INVALID = "argument_invalid"
    ARGUMENT_MISSING = "argument_missing"
    ARGUMENT_NOT_SERIALIZABLE = "argument_not_serializable"
    ARGUMENTS_INVALID = "arguments_invalid"
    AUDIENCE_REQUIRED = "audience_required"
    AUDIT_CONFLICT = "audit_conflict"
    AUDIT_UNAVAILABLE = "audit_unavailable"
    BACKUP_EXISTS = "backup_exists"
    BACKUP_FAILED = "backup_failed"
    BACKUP_INVALID = "backup_invalid"
    BACKUP_UNSUPPORTED = "backup_unsupported"
    BAD_AUDIENCE = "bad_audience"
    BAD_BROKER_RESPONSE = "bad_broker_response"
    BAD_ISSUER = "bad_issuer"
    BAD_SIGNATURE = "bad_signature"
    BAD_SUBJECT = "bad_subject"
    BAD_TYP = "bad_typ"
    BASELINE_INVALID = "baseline_invalid"
    BASELINE_MISSING = "baseline_missing"
    BLOCKING_CALL_IN_EVENT_LOOP = "blocking_call_in_event_loop"
    BROKER_NOT_RUNNING = "broker_not_running"
    BROKER_RUNNING = "broker_running"
    BROKER_UNAVAILABLE = "broker_unavailable"
    BROKER_UNREACHABLE = "broker_unreachable"
    BUNDLE_UNAVAILABLE = "bundle_unavailable"
    CASES_INVALID = "cases_invalid"
    CATALOG_INVALID = "catalog_invalid"
    CHECKPOINT_FILE_UNREADABLE = "checkpoint_file_unreadable"
    CHECKPOINT_MALFORMED = "checkpoint_malformed"
    CLAIM_INVALID = "claim_invalid"
    CLAIM_MISMATCH = "claim_mismatch"
    CLAIM_UNMAPPABLE = "claim_unmappable"
    CONFIG_INVALID = "config_invalid"
    CONFLICT = "conflict"
    CONNECTOR_FAILED = "connector_failed"
    CONNECTOR_MISCONFIGURED = "connector_misconfigured"
    CONNECTOR_NOT_CONFIGURED = "connector_not_configured"
    CONNECTOR_UNAVAILABLE = "connector_unavailable"
    CONSOLE_DISABLED = "console_disabled"
    CONTEXT_INVALID = "context_invalid"
    CREDENTIAL_DENIED = "credential_denied"
    CREDENTIAL_INVALID = "credential_invalid"
    CRIT_UNSUPPORTED = "crit_unsupported"
    CSRF_FAILED = "csrf_failed"
    DELEGATION_DENIED = "delegation_denied"
    DELEGATION_INVALID = "delegation_invalid"
    DELEGATION_USED = "delegation_used"
    DELEGATOR_UNTRUSTED = "delegator_untrusted"
    DEMO_NO_APPROVAL = "demo_no_approval"
    DEMO_NO_CREDENTIAL = "demo_no_credential"
    DEMO_PART_FAILED = "demo_part_failed"
    DENIED = "denied"
    DEPTH_EXCEEDED = "depth_exceeded"
    DPOP_ATH_MISMATCH = "dpop_ath_mismatch"
    DPOP_INVALID = "dpop_invalid"
    DPOP_KEY_MISMATCH = "dpop_key_mismatch"
    DPOP_METHOD_MISMATCH = "dpop_method_mismatch"
    DPOP_PROOF_MISSING = "dpop_proof_missing"
    DPOP_REPLAY = "dpop_replay"
    DPOP_REQUIRED = "dpop_required"
    DPOP_STALE = "dpop_stale"
    DPOP_UNSUPPORTED = "dpop_unsupported"
    DPOP_URL_MISMATCH = "dpop_url_mismatch"
    DUPLICATE_ENTRY = "duplicate_entry"
    ENFORCER_NOT_CONFIGURED = "enforcer_not_configured"
    ENFORCER_UNAUTHENTICATED = "enforcer_unauthenticated"
    ENTRY_NOT_FOUND = "entry_not_found"
    ERROR = "error"
    EVENT_NOT_FOUND = "event_not_found"
    FINDING_NOT_FOUND = "finding_not_found"
    FINGERPRINT_MISMATCH = "fingerprint_mismatch"
    FORBIDDEN = "forbidden"
    FOREIGN_TRUST_DOMAIN = "foreign_trust_domain"
    GATEWAY_IDENTITY_EXPIRED = "gateway_identity_expired"
    HEADER_KEY_REJECTED = "header_key_rejected"
    HEADER_UNSUPPORTED = "header_unsupported"
    HEADERS_TOO_LARGE = "headers_too_large"
    IDENTITY_UNAVAILABLE = "identity_unavailable"
    INTENT_MISMATCH = "intent_mismatch"
    INTENT_REQUIRED = "intent_required"
    INSUFFICIENT_SCOPE = "insufficient_scope"
    INTERNAL_ERROR = "internal_error"
    INVALID_ARGUMENTS = "invalid_arguments"
    INVALID_ATTRIBUTE = "invalid_attribute"
    INVALID_AUDIENCE = "invalid_audience"
    INVALID_EVENT_ID = "invalid_event_id"
    INVALID_FIELD = "invalid_field"
    INVALID_FORM = "invalid_form"
    INVALID_HEADER = "invalid_header"
    INVALID_LIMIT = "invalid_limit"
    INVALID_LISTEN = "invalid_listen"
    INVALID_OUTCOME = "invalid_outcome"
    INVALID_PATH = "invalid_path"
    INVALID_QUERY = "invalid_query"
    INVALID_REQUEST = "invalid_request"
    INVALID_SCOPE = "invalid_scope"
    INVALID_SECRET_NAME = "invalid_secret_name"
    INVALID_SECRET_VALUE = "invalid_secret_value"
    INVALID_SELECTOR = "invalid_selector"
    INVALID_SPIFFE_ID = "invalid_spiffe_id"
    INVALID_TIME = "invalid_time"
    INVALID_TOKEN = "invalid_token"
    INVALID_TTL = "invalid_ttl"
    INVALID_UPSTREAM = "invalid_upstream"
    ISSUER_UNAVAILABLE = "issuer_unavailable"
    JWK_INVALID = "jwk_invalid"
    JWKS_INVALID = "jwks_invalid"
    KEY_INVALID = "key_invalid"
    LEASE_NOT_FOUND = "lease_not_found"
    LEASE_REVOKED = "lease_revoked"
    LOGIN_LINK_INVALID = "login_link_invalid"
    MALFORMED_BODY = "malformed_body"
    MALFORMED_HTTP = "malformed_http"
    MALFORMED_JSON = "malformed_json"
    MAPPING_INVALID = "mapping_invalid"
    MASTER_KEY_MISMATCH = "master_key_mismatch"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    METRICS_FORBIDDEN = "metrics_forbidden"
    MISSING_FIELD = "missing_field"
    MISSING_TOKEN = "missing_token"
    NOT_A_LEGACY_LOGIN = "not_a_legacy_login"
    NOT_A_POSTGRES_SERVICE = "not_a_postgres_service"
    NO_ACTIVE_DECISION = "no_active_decision"
    NO_ACTIVE_TASK = "no_active_task"
    NO_CONNECTOR = "no_connector"
    NO_CREDENTIAL = "no_credential"
    NO_MATCHING_ENTRY = "no_matching_entry"
    NO_PERMIT = "no_permit"
    NO_POLICY = "no_policy"
    NO_PRIVILEGES = "no_privileges"
    NO_ROUTE = "no_route"
    NO_ROUTE_FOR_SERVICE = "no_route_for_service"
    NO_SHADOW = "no_shadow"
    NO_SIGNING_KEY = "no_signing_key"
    NODE_ID_IN_USE = "node_id_in_use"
    NOT_FOUND = "not_found"
    OPERATOR_FORBIDDEN = "operator_forbidden"
    OTEL_UNAVAILABLE = "otel_unavailable"
    OUT_OF_SCOPE = "out_of_scope"
    PATH_OUTSIDE_ROOTS = "path_outside_roots"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    PEER_CHANGED = "peer_changed"
    PEER_GONE = "peer_gone"
    PEER_UNKNOWN = "peer_unknown"
    POLICY_ERROR = "policy_error"
    POLICY_FORBID = "policy_forbid"
    POLICY_INVALID = "policy_invalid"
    POLICY_WARNINGS = "policy_warnings"
    PROMOTE_MISMATCH = "promote_mismatch"
    REPORT_EMPTY_WINDOW = "report_empty_window"
    REPORT_MALFORMED = "report_malformed"
    REPORT_NO_EVENTS = "report_no_events"
    REPORT_STORE_UNREADABLE = "report_store_unreadable"
    REPORT_UNREADABLE = "report_unreadable"
    REPORT_UNSIGNED = "report_unsigned"
    REPORT_WINDOW_TOO_LARGE = "report_window_too_large"
    REQUEST_TARGET_TOO_LONG = "request_target_too_long"
    REQUEST_TIMEOUT = "request_timeout"
    REVOCATION_FEED_STALE = "revocation_feed_stale"
    ROLE_REQUIRED = "role_required"
    ROTATION_FAILED = "rotation_failed"
    ROTATION_INVALID = "rotation_invalid"
    ROTATION_NOT_CONFIGURED = "rotation_not_configured"
    SCHEMA_INVALID = "schema_invalid"
    SCOPE_EXCEEDS_PARENT = "scope_exceeds_parent"
    SECRET_NOT_CONFIGURED = "secret_not_configured"
    SECRET_UNDECRYPTABLE = "secret_undecryptable"
    SHADOW_CHANGED = "shadow_changed"
    SHARED_LOGIN_IN_USE = "shared_login_in_use"
    SHARED_LOGIN_NOT_FOUND = "shared_login_not_found"
    SHARED_LOGIN_NOT_IN_CATALOG = "shared_login_not_in_catalog"
    SHARED_LOGIN_REFUSED = "shared_login_refused"
    SHARED_LOGIN_SUPERUSER = "shared_login_superuser"
    SIGNIN_FAILED = "signin_failed"
    SIGNIN_NO_ROLE = "signin_no_role"
    SOCKET_IN_USE = "socket_in_use"
    STORE_SCHEMA_NEWER = "store_schema_newer"
    STORE_UNAVAILABLE = "store_unavailable"
    SUBJECT_NOT_ALLOWED = "subject_not_allowed"
    SVID_UNAVAILABLE = "svid_unavailable"
    TASK_NOT_ACTIVE = "task_not_active"
    TASK_NOT_FOUND = "task_not_found"
    TASK_OPEN_DENIED = "task_open_denied"
    TOKEN_BOUND = "token_bound"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_MALFORMED = "token_malformed"
    TOKEN_NOT_YET_VALID = "token_not_yet_valid"
    TOKEN_REVOKED = "token_revoked"
    TOKEN_TASK_MISMATCH = "token_task_mismatch"
    TOKEN_TOO_LARGE = "token_too_large"
    TOKEN_UNKNOWN_TASK = "token_unknown_task"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    TOO_MANY_REQUESTS = "too_many_requests"
    TOO_MANY_STREAMS = "too_many_streams"
    TOO_MANY_WAITS = "too_many_waits"
    TOOL_DIGEST_MISMATCH = "tool_digest_mismatch"
    TOOL_DIGEST_REQUIRED = "tool_digest_required"
    TOOL_NOT_CHANGED = "tool_not_changed"
    TOOL_NOT_FOUND = "tool_not_found"
    TTL_EXCEEDS_PARENT = "ttl_exceeds_parent"
    UNAUTHENTICATED = "unauthenticated"
    UNAVAILABLE = "unavailable"
    UNKNOWN_KID = "unknown_kid"
    UNKNOWN_ROLE = "unknown_role"
    UNKNOWN_ACTION = "unknown_action"
    UNKNOWN_CONTROL = "unknown_control"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    UNKNOWN_FIELD = "unknown_field"
    UNKNOWN_INTENT = "unknown_intent"
    UNKNOWN_OPERATION = "unknown_operation"
    UNKNOWN_RESOURCE = "unknown_resource"
    UNKNOWN_SERVICE = "unknown_service"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    UNTRUSTED_DOMAIN = "untrusted_domain"
    UPSTREAM_GONE = "upstream_gone"
    UPSTREAM_RESPONSE_TOO_LARGE = "upstream_response_too_large"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    WORKER_UNREACHABLE = "worker_unreachable"
    WORKLOAD_API_UNAVAILABLE = "workload_api_unavailable"
    WORKLOAD_SOCKET_UNAVAILABLE = "workload_socket_unavailable"


class TetherError(Exception):
    """Root of every error Tether raises on purpose."""

    status: ClassVar[int] = 500
    #: An ``ErrorCode`` member (plain strings work; the scan test insists they are members).
    default_code: ClassVar[str] = ErrorCode.INTERNAL_ERROR

    def __init__(self, message: str, *, code: ErrorCode | str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.code: str = code or self.default_code
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": str(self.code), "message": self.message}
        body.update(self.details)
        return body

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidRequest(TetherError):
    status = 400
    default_code: ClassVar[str] = ErrorCode.INVALID_REQUEST


class PayloadTooLarge(InvalidRequest):
    status = 413
    default_code: ClassVar[str] = ErrorCode.PAYLOAD_TOO_LARGE


class HeadersTooLarge(InvalidRequest):
    status = 431
    default_code: ClassVar[str] = ErrorCode.HEADERS_TOO_LARGE


class Unauthenticated(TetherError):
    status = 401
    default_code: ClassVar[str] = ErrorCode.UNAUTHENTICATED


class Forbidden(TetherError):
    status = 403
    default_code: ClassVar[str] = ErrorCode.FORBIDDEN


class NotFound(TetherError):
    status = 404
    default_code: ClassVar[str] = ErrorCode.NOT_FOUND


class MethodNotAllowed(TetherError):
    status = 405
    default_code: ClassVar[str] = ErrorCode.METHOD_NOT_ALLOWED


class Conflict(TetherError):
    status = 409
    default_code: ClassVar[str] = ErrorCode.CONFLICT


class TooManyRequests(TetherError):
    status = 429
    default_code: ClassVar[str] = ErrorCode.TOO_MANY_REQUESTS


class ConfigError(TetherError):
    status = 500
    default_code: ClassVar[str] = ErrorCode.CONFIG_INVALID


class PolicyError(TetherError):
    status = 500
    default_code: ClassVar[str] = ErrorCode.POLICY_INVALID


class Unavailable(TetherError):
    status = 503
    default_code: ClassVar[str] = ErrorCode.UNAVAILABLE


#: The classes a status on the wire stands for (the reverse of ``status``): the SDK and
#: the remote gateway authorizer rebuild a broker error as the class it was raised as.
_BY_STATUS: dict[int, type[TetherError]] = {
    cls.status: cls
    for cls in (
        InvalidRequest,
        PayloadTooLarge,
        HeadersTooLarge,
        Unauthenticated,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        Conflict,
        TooManyRequests,
        Unavailable,
    )
}

#: Every status the HTTP surfaces document for an error body (``/openapi.json``).
ERROR_STATUSES: tuple[int, ...] = (*sorted(_BY_STATUS), 500)


def http_status(exc: TetherError) -> int:
    """The HTTP status of an error: its class's, or 500 for classes that are no HTTP answer."""
    return exc.status if 400 <= exc.status < 600 else 500


def error_class(status: int) -> type[TetherError]:
    """The class a broker error with this HTTP status is raised as on the client side.

    Unknown statuses (a proxy's 502, a 500) are ``Unavailable``: the caller fails closed.
    """
    return _BY_STATUS.get(status, Unavailable)
