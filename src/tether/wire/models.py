"""Every body of the broker's HTTP API as a strict pydantic model (see ``tether.wire``).

Request models are ``strict`` (a number is never a string, ``true`` is never ``1``) and
forbid unknown fields; optional fields accept ``null`` as "absent", as the API always
has. Response models describe what the server sends; they allow no extra fields either,
so a view that grows a field without its model fails the schema tests.

Bounds are the API's: a field's ``max_length`` here is what the server enforces and
what ``/openapi.json`` documents. ``SDK_MODELS`` lists the models the client's
generated records (``tether/sdk/_wire.py``) are made from.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from tether.model import Outcome, TaskState

MAX_TTL_SECONDS = 30 * 24 * 3600
MAX_SCOPE = 100
MAX_ARGUMENTS = 64
#: The largest token any configuration accepts (``limits.max_token_bytes`` is lower or equal).
MAX_TOKEN_CHARS = 64 * 1024
#: Catalog ids one enforcer call may name (``gateway/service.py`` refuses more, too).
MAX_RESOURCES = 512

Action = Annotated[str, Field(max_length=64, description="an action id, e.g. `tool:call`")]
ResourceId = Annotated[str, Field(max_length=256, description="a catalog resource id")]
Ttl = Annotated[int, Field(ge=1, le=MAX_TTL_SECONDS, description="seconds")]
Timestamp = Annotated[float, Field(description="POSIX seconds, UTC")]


class Wire(BaseModel):
    """Base of every wire model: strict types, no unknown fields, immutable."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def not_null(schema: dict[str, Any]) -> None:
    """The JSON Schema of a field that may be left out but is never ``null``: its value type."""
    options = schema.pop("anyOf", None) or []
    real = [o for o in options if o.get("type") != "null"]
    if len(real) == 1:
        for key, value in real[0].items():
            schema.setdefault(key, value)  # the field's own description wins
    elif real:
        schema["anyOf"] = real
    schema.pop("default", None)


def refuse_null(value: Any, info: ValidationInfo, *, error: str = "missing") -> Any:
    """A ``before`` check for :func:`not_null` fields: an explicit ``null`` is refused as
    ``error`` (``missing`` → ``missing_field``; a pydantic type error → ``invalid_field``)."""
    if value is None:
        raise PydanticCustomError(error, "`{field}` may be left out but not null", {"field": info.field_name})
    return value


# -- shared ------------------------------------------------------------------------------


class Grant(Wire):
    """One (action, resource) a task may use."""

    action: Action
    resource: ResourceId


class ErrorBody(BaseModel):
    """Every error answer: a stable ``code``, a message saying what to do, and details."""

    model_config = ConfigDict(extra="allow", frozen=True)

    # An open set: `ErrorCode` (also in the document) lists the codes this version names,
    # a few layers pass theirs as strings (`dpop_invalid`), and a client must accept a
    # code it has never seen (by its HTTP status) rather than fail on it.
    code: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)] = Field(
        description="stable and machine-readable; `ErrorCode` lists the known ones (the set may grow)"
    )
    message: str
    field: str | None = Field(default=None, description="the request field at fault")


class Reason(Wire):
    """Why a policy decided as it did (its id and its `@reason`)."""

    policy_id: str
    message: str


class DecisionBody(Wire):
    """A decision for one action (``/v1/authorize``; inside enforcer answers)."""

    decision: Outcome
    decision_id: str
    reasons: list[Reason]
    policy_version: str
    approval_id: str | None = Field(default=None, description="present when approval is required")
    code: str | None = Field(default=None, description="machine-readable reason of a deny")


# -- /v1/tasks ---------------------------------------------------------------------------


class OpenTaskRequest(Wire):
    """Open a task for one intent and scope, or redeem a delegation offered to this agent."""

    intent: Annotated[str, Field(max_length=64)] | None = Field(
        default=None, description="required unless `delegation` is given"
    )
    description: Annotated[str, Field(max_length=2000)] | None = None
    scope: Annotated[list[Grant], Field(max_length=MAX_SCOPE)] | None = Field(
        default=None,
        json_schema_extra=not_null,
        description="the grants the task may use (absent: the intent's whole scope)",
    )
    ttl_seconds: Ttl | None = Field(
        default=None, json_schema_extra=not_null, description="default: `tasks.max_ttl_seconds`"
    )
    delegation: Annotated[str, Field(max_length=256)] | None = Field(
        default=None, description="a delegation id offered to this agent by a parent task"
    )
    delegator_token: Annotated[str, Field(max_length=MAX_TOKEN_CHARS)] | None = Field(
        default=None,
        description="the delegating human's OIDC ID token (at most `limits.max_token_bytes`)",
    )

    # Left out means "the default"; an explicit null is a client bug, refused as before.
    @field_validator("scope", mode="before")
    @classmethod
    def _scope_not_null(cls, value: Any, info: ValidationInfo) -> Any:
        return refuse_null(value, info, error="list_type")

    @field_validator("ttl_seconds", mode="before")
    @classmethod
    def _ttl_not_null(cls, value: Any, info: ValidationInfo) -> Any:
        return refuse_null(value, info)


class TaskOpened(Wire):
    """The opened task and its token (send it as `Authorization: Bearer` or `DPoP`)."""

    task_id: str
    task_token: str
    expires_at: Timestamp
    scope: list[Grant]
    depth: int
    parent_id: str | None


class DelegatorView(Wire):
    """The human a task acts for (from a verified OIDC ID token)."""

    sub: str
    iss: str


class TaskChild(Wire):
    """A task delegated from this one."""

    task_id: str
    agent: str
    state: TaskState


class TaskView(Wire):
    """A task as its token holder (or an ancestor's) and operators see it."""

    task_id: str
    agent: str
    intent: str
    description: str
    state: TaskState
    scope: list[Grant]
    created_at: Timestamp
    expires_at: Timestamp
    parent_id: str | None
    root_id: str
    depth: int
    act: list[str] = Field(description="SPIFFE IDs of the delegating agents, nearest first")
    delegator: DelegatorView | None
    children: list[TaskChild] | None = Field(default=None, description="only on a single task")


class DelegateRequest(Wire):
    """Offer part of a task to one child agent: single use, short-lived."""

    child: Annotated[str, Field(max_length=2048, description="the child's SPIFFE ID")]
    scope: Annotated[list[Grant], Field(max_length=MAX_SCOPE)]
    ttl_seconds: Ttl


class DelegationOffered(Wire):
    """A single-use offer: the child redeems `delegation` at `POST /v1/tasks`."""

    delegation: str
    child: str
    expires_at: Timestamp
    scope: list[Grant]
    ttl_seconds: int


class TaskClosed(Wire):
    """The tasks this closed."""

    task_id: str
    closed: list[str] = Field(description="ids of every task this closed (the task and descendants)")


# -- /v1/authorize -----------------------------------------------------------------------


class RequestContext(Wire):
    """The HTTP request an action stands for, when an HTTP gateway asks."""

    method: Annotated[str, Field(max_length=16)] | None = None
    path: Annotated[str, Field(max_length=4096)] | None = None


class AuthorizeRequestBody(Wire):
    """Decide one action of the task now."""

    action: Action
    resource: ResourceId
    arguments: Annotated[dict[str, Any], Field(max_length=MAX_ARGUMENTS)] | None = None
    context: RequestContext | None = None


class AuthorizeResponse(DecisionBody):
    """The decision, with the credential an allowed action receives (if its resource has one)."""

    credential: dict[str, Any] | None = Field(
        default=None, description="`lease_id` plus what the connector hands the agent"
    )


# -- broker metadata ---------------------------------------------------------------------


class Jwks(Wire):
    """The broker's public signing keys (RFC 7517)."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    keys: list[dict[str, Any]]


class SpiffeBundle(Wire):
    """The trust domain's JWT authorities as a SPIFFE bundle."""

    keys: list[dict[str, Any]]
    spiffe_sequence: int
    spiffe_refresh_hint: int


class Health(Wire):
    """The process is up."""

    status: Literal["ok"]


class Readiness(Wire):
    """Whether the store answers, and the policy set in force."""

    status: Literal["ok", "unavailable"]
    policy_version: str


# -- credentials -------------------------------------------------------------------------


class CredentialRequest(Wire):
    """Ask for a credential for one resource (decided as `credential:issue`)."""

    resource: ResourceId


class CredentialIssued(Wire):
    """A lease: `lease_id`, the decision, and what the connector hands the agent."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    lease_id: str
    decision_id: str


class TokenForm(Wire):
    """RFC 7662 / RFC 7009 form body; other parameters are ignored, as the RFCs ask."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    token: str
    token_type_hint: str | None = None


class Introspection(Wire):
    """RFC 7662: ``{"active": false}`` for anything not live, else the token's claims."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    active: bool


class RevocationEvent(Wire):
    """One revocation (a task, or a credential lease) and until when it matters."""

    seq: int
    ts: Timestamp
    kind: str
    task_id: str | None
    lease_id: str | None
    audience: str | None
    reason: str
    expires_at: Timestamp


class Revocations(Wire):
    """Revocations after the cursor asked for, and the cursor to ask with next."""

    events: list[RevocationEvent]
    cursor: int


# -- /v1/gateway (enforcement points in other processes) ---------------------------------


class DpopProofBody(Wire):
    """The agent's DPoP proof as the gateway received it (checked against the gateway's URL)."""

    proof: Annotated[str, Field(max_length=8192)]
    method: Annotated[str, Field(max_length=16)]
    url: Annotated[str, Field(max_length=4096)]
    count: Annotated[int, Field(ge=0, le=16)] = 1


#: The resource URI an OAuth access token was minted for (RFC 8707).
Audience = Annotated[str, Field(max_length=2048, description="the resource the token must be for")]


class EnforcerAuthorizeRequest(AuthorizeRequestBody):
    """An authorize body as a gateway relays it, with the agent's DPoP proof."""

    dpop: DpopProofBody | None = None
    audience: Audience | None = None


class TaskFields(Wire):
    """The task an enforcer decision was made in."""

    task_id: str
    root_task_id: str
    parent_task_id: str | None
    agent: str


class EnforcerCredential(Wire):
    """Both halves of a credential: the agent's and the one the gateway injects."""

    lease_id: str
    for_agent: dict[str, Any] | None
    for_enforcer: dict[str, Any] | None = Field(description="what the gateway injects upstream")


class EnforcerAuthorizeResponse(Wire):
    """The decision for an enforcement point, with the task and the credential."""

    decision: DecisionBody
    task: TaskFields | None
    credential: EnforcerCredential | None = None


class VisibleRequest(Wire):
    """Which of these resources could the task use with this action?"""

    action: Action
    resources: Annotated[list[str], Field(max_length=MAX_RESOURCES)]
    dpop: DpopProofBody | None = None
    audience: Audience | None = None


class TokenCheckRequest(Wire):
    """Check an agent's token (the `Authorization` header) for one resource."""

    audience: Audience | None = None


class TokenChecked(Wire):
    """The token is valid for the resource and its task is active."""

    task_id: str
    agent: str
    scope: list[Grant]
    expires_at: Timestamp


class OAuthMetadata(Wire):
    """RFC 8414 authorization server metadata."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    issuer: str
    token_endpoint: str


class OAuthTokenForm(Wire):
    """An RFC 6749 token request (form-encoded); the grant's own parameters go with it."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    grant_type: str


class OAuthRevokeForm(Wire):
    """An RFC 7009 revocation request for a refresh or access token (form-encoded)."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    token: str


class OAuthTokens(Wire):
    """An RFC 6749 token response."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    access_token: str
    token_type: str


class Empty(Wire):
    """An empty object (`{}`)."""


class OAuthErrorBody(Wire):
    """An RFC 6749 error: the OAuth endpoints answer this, not `ErrorBody`."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    error: str
    error_description: str | None = None


class VisibleResponse(Wire):
    """The resources the task could use."""

    resources: list[str]


class CallRecord(Wire):
    """One call record (``call.forwarded`` / ``call.result``) linked to its decision."""

    type: Annotated[str, Field(max_length=48)]
    task: dict[str, Any] | None = None
    decision_id: Annotated[str, Field(max_length=64)] | None = None
    lease_id: Annotated[str, Field(max_length=64)] | None = None
    trace_id: Annotated[str, Field(max_length=64)] | None = None
    payload: dict[str, Any] | None = None


class CallRecorded(Wire):
    """The call record was written."""

    recorded: Literal[True]


class ArgumentsRequest(Wire):
    """The resources whose declared arguments the gateway wants."""

    resources: Annotated[list[str], Field(max_length=MAX_RESOURCES)]


class ArgumentsResponse(Wire):
    arguments: dict[str, dict[str, dict[str, Any]]] = Field(
        description="resource → argument name → its declared type and bounds"
    )


class ToolsRequest(Wire):
    """The tool definitions an MCP upstream presents."""

    server: Annotated[str, Field(max_length=128)]
    tools: dict[str, dict[str, Any]]


class ToolsResponse(Wire):
    """Each tool's state against its pin."""

    states: dict[str, Literal["approved", "changed"]]


#: The models the client's records are generated from (``python -m tether.wire.codegen``).
SDK_MODELS: tuple[type[BaseModel], ...] = (
    Grant,
    Reason,
    ErrorBody,
    OpenTaskRequest,
    TaskOpened,
    DelegatorView,
    TaskChild,
    TaskView,
    DelegateRequest,
    DelegationOffered,
    TaskClosed,
    RequestContext,
    AuthorizeRequestBody,
    AuthorizeResponse,
)
