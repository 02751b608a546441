"""Broker side of the gateways: the enforcer API and the operators' pin commands.

``/v1/gateway/*`` serves enforcement points that run in other processes. Each request
carries two credentials: the agent's task token (``Authorization``), which is what is
being authorized, and the gateway's own JWT-SVID (``X-Tether-Enforcer``), which must
name a SPIFFE ID listed in ``[gateway] enforcers``. Only such a caller receives the
``for_enforcer`` half of a credential (an upstream secret to inject) — the public
``/v1/authorize`` never returns it, so an agent cannot obtain what the gateway injects.
The enforcer is checked before anything else so the API is no oracle to strangers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from tether.audit import event as ev
from tether.errors import ConfigError, Forbidden, InvalidRequest, TetherError, Unauthenticated
from tether.gateway import service
from tether.gateway.authorizer import LocalAuthorizer, task_fields
from tether.gateway.http import HttpGateway
from tether.gateway.pins import ToolPins
from tether.gateway.routes import load_routes
from tether.identity.dpop import DpopProof
from tether.identity.spiffe_id import parse_spiffe_id
from tether.model import new_id
from tether.server.admin import OperationTable, Operator
from tether.server.app import bearer, guarded, reply, trace_id
from tether.server.parsing import authorize_request
from tether.wire import models as w
from tether.wire.validate import parse

if TYPE_CHECKING:
    from tether.runtime import Core, Runtime

ENFORCER_HEADER = "x-tether-enforcer"
#: The gateway layer's admin operations (``tether mcp tools …``).
OPERATIONS = OperationTable()
operation = OPERATIONS.operation


@dataclass(frozen=True)
class GatewayLayer:
    pins: ToolPins
    http: HttpGateway | None


def _enforcers(rt: Core) -> frozenset[str]:
    out = set()
    for i, value in enumerate(rt.settings.gateway.enforcers):
        try:
            out.add(str(parse_spiffe_id(value)))
        except TetherError:
            raise ConfigError(
                f"`gateway.enforcers[{i}]` is not a SPIFFE ID: `{value}`",
                code="config_invalid",
                field=f"gateway.enforcers[{i}]",
            ) from None
    return frozenset(out)


def _proof(raw: w.DpopProofBody | None) -> DpopProof | None:
    """The agent's DPoP proof as the gateway received it: checked against the gateway's URL."""
    if raw is None:
        return None
    return DpopProof(proof=raw.proof, method=raw.method, url=raw.url, count=raw.count)


class EnforcerApi:
    def __init__(self, rt: Core, pins: ToolPins) -> None:
        self.rt = rt
        self.pins = pins
        self.enforcers = _enforcers(rt)

    def enforcer(self, request: Request) -> str:
        svid = request.headers.get(ENFORCER_HEADER)
        if not svid:
            raise Unauthenticated(
                f"send the gateway's JWT-SVID in `{ENFORCER_HEADER}`", code="enforcer_unauthenticated"
            )
        try:
            workload = self.rt.svids.verify(svid)
        except Unauthenticated as exc:
            self._refused(request, exc)
            if exc.code == "token_expired":
                raise Unauthenticated(
                    "the gateway's own identity (its JWT-SVID) has expired; the gateway must renew "
                    "it from its Workload API or SVID file",
                    code="gateway_identity_expired",
                ) from None
            raise Unauthenticated(
                f"the gateway's own identity was refused: {exc.message}", code="enforcer_unauthenticated"
            ) from None
        if workload.spiffe_id not in self.enforcers:
            raise Forbidden(
                f"`{workload.spiffe_id}` is not a configured enforcement point; add it to "
                "`gateway.enforcers`",
                code="enforcer_not_configured",
            )
        return str(workload.spiffe_id)

    def _refused(self, request: Request, exc: TetherError) -> None:
        """A refused enforcer identity is an audit event: a gateway that lost its identity
        (or something posing as one) must show up where operators look."""
        with self.rt.audit.unit() as u:
            u.emit(
                ev.DECISION,
                {
                    "action": "gateway:enforce",
                    "resource": request.url.path[:128],
                    "outcome": "deny",
                    "code": "gateway_identity_expired" if exc.code == "token_expired" else exc.code,
                    "reason": exc.message[:256],
                    "policy_version": self.rt.engine.bundle.version,
                },
                decision_id=new_id("dec"),
            )

    async def _doc(self, request: Request) -> tuple[str, dict[str, Any]]:
        enforcer = await run_in_threadpool(self.enforcer, request)
        doc: dict[str, Any] = await request.app.state.api.body(request)
        return enforcer, doc

    async def authorize(self, request: Request) -> Response:
        await run_in_threadpool(self.enforcer, request)
        token = bearer(request)
        try:
            doc = await request.app.state.api.body(request)
            body = parse(w.EnforcerAuthorizeRequest, doc)
        except InvalidRequest as bad:  # a forged task token is recorded whatever the body holds
            await run_in_threadpool(self.rt.broker.refuse_body, token, bad)
            raise
        # Only a configured enforcement point may name its resource (`audience`): it restricts
        # which tokens pass (an OAuth access token is minted for exactly one resource).
        req = replace(authorize_request(body, trace_id=trace_id(request)), audience=body.audience or None)
        result = await run_in_threadpool(self.rt.broker.authorize, token, req, _proof(body.dpop))
        answer: dict[str, Any] = {"decision": result.decision.to_dict(), "task": task_fields(result.task)}
        if result.credential is not None:
            c = result.credential
            answer["credential"] = {
                "lease_id": c.lease_id,
                "for_agent": c.for_agent,
                "for_enforcer": c.for_enforcer,
            }
        return reply(w.EnforcerAuthorizeResponse, answer, headers={"cache-control": "no-store"})

    async def visible(self, request: Request) -> Response:
        _, doc = await self._doc(request)
        token = bearer(request)
        body = parse(w.VisibleRequest, doc)
        found = await run_in_threadpool(
            service.visible,
            self.rt,
            token,
            body.action,
            list(body.resources),
            _proof(body.dpop),
            body.audience or None,
        )
        return reply(w.VisibleResponse, {"resources": found})

    async def token(self, request: Request) -> Response:
        _, doc = await self._doc(request)
        token = bearer(request)
        body = parse(w.TokenCheckRequest, doc)
        found = await run_in_threadpool(service.check_token, self.rt, token, body.audience or None)
        return reply(w.TokenChecked, found, headers={"cache-control": "no-store"})

    async def calls(self, request: Request) -> Response:
        enforcer, doc = await self._doc(request)
        body = parse(w.CallRecord, doc)
        await run_in_threadpool(
            service.record_call,
            self.rt,
            body.type,
            body.task or {},
            body.decision_id or None,
            body.lease_id or None,
            body.trace_id or None,
            body.payload or {},
            enforcer,
        )
        return reply(w.CallRecorded, {"recorded": True})

    async def arguments(self, request: Request) -> Response:
        _, doc = await self._doc(request)
        body = parse(w.ArgumentsRequest, doc)
        found = service.tool_arguments(self.rt, list(body.resources))
        view = {rid: {n: spec.to_dict() for n, spec in specs.items()} for rid, specs in found.items()}
        return reply(w.ArgumentsResponse, {"arguments": view})

    async def tools(self, request: Request) -> Response:
        _, doc = await self._doc(request)
        body = parse(w.ToolsRequest, doc)
        states = await run_in_threadpool(self.pins.observe, body.server, dict(body.tools))
        return reply(w.ToolsResponse, {"states": states})


def build(rt: Core) -> GatewayLayer:
    pins = ToolPins(rt.audit, rt.broker.clock)
    api = EnforcerApi(rt, pins)
    http = _mount_http_gateway(rt, pins) if rt.settings.gateway.http_routes else None
    rt.add_operations(OPERATIONS)
    rt.routes.extend(
        [
            Route("/v1/gateway/authorize", guarded(api.authorize), methods=["POST"]),
            Route("/v1/gateway/visible", guarded(api.visible), methods=["POST"]),
            Route("/v1/gateway/token", guarded(api.token), methods=["POST"]),
            Route("/v1/gateway/calls", guarded(api.calls), methods=["POST"]),
            Route("/v1/gateway/tools", guarded(api.tools), methods=["POST"]),
            Route("/v1/gateway/arguments", guarded(api.arguments), methods=["POST"]),
        ]
    )
    return GatewayLayer(pins, http)


def _mount_http_gateway(rt: Core, pins: ToolPins) -> HttpGateway:
    """The HTTP gateway in the broker's process (``[gateway] http_routes``): in-process
    authorization, served on the broker's listener under ``http_mount``."""
    path = Path(rt.settings.gateway.http_routes)
    table = load_routes(path if path.is_absolute() else rt.settings.state_dir / path)
    table.check_catalog(rt.catalog)
    app = HttpGateway(table, LocalAuthorizer(rt, pins))
    rt.routes.append(Mount(rt.settings.gateway.http_mount, app=app))
    return app


# -- admin operations (`tether mcp tools …`) ----------------------------------------------


@operation("mcp.tools.list")
def tools_list(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
    server = args.get("server")
    return rt.pins.list(server if isinstance(server, str) and server else None)


@operation("mcp.tools.retire")
def tools_retire(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
    server, tool, digest = args.get("server"), args.get("tool"), args.get("digest")
    if not isinstance(server, str) or not isinstance(tool, str) or not isinstance(digest, str):
        raise InvalidRequest("name the `server`, the `tool` and the `digest`", code="missing_field")
    return rt.pins.retire(server, tool, by=op.name, digest=digest)


@operation("mcp.tools.approve")
def tools_approve(rt: Runtime, args: dict[str, Any], op: Operator) -> Any:
    server, tool, digest = args.get("server"), args.get("tool"), args.get("digest")
    if not isinstance(server, str) or not isinstance(tool, str):
        raise InvalidRequest("name the `server` and the `tool`", code="missing_field")
    return rt.pins.approve(server, tool, by=op.name, digest=digest if isinstance(digest, str) else None)
