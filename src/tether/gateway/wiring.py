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
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from tether.audit import event as ev
from tether.broker_base import new_id
from tether.errors import ConfigError, Forbidden, InvalidRequest, TetherError, Unauthenticated
from tether.gateway import service
from tether.gateway.authorizer import LocalAuthorizer, task_fields
from tether.gateway.http import HttpGateway
from tether.gateway.pins import ToolPins
from tether.gateway.routes import load_routes
from tether.identity.dpop import DpopProof
from tether.identity.spiffe_id import parse_spiffe_id
from tether.server.admin import OperationTable, Operator
from tether.server.app import bearer, guarded, trace_id
from tether.server.parsing import check_fields, parse_authorize, req_str

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


def _proof(raw: Any) -> DpopProof | None:
    """The agent's DPoP proof as the gateway received it: checked against the gateway's URL."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidRequest("`dpop` must be an object", code="invalid_field", field="dpop")
    check_fields(raw, ("proof", "method", "url", "count"), "dpop.")
    count = raw.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= 16:
        raise InvalidRequest("`dpop.count` must be a small integer", code="invalid_field", field="dpop.count")
    return DpopProof(
        proof=req_str(raw, "proof", max_len=8192),
        method=req_str(raw, "method", max_len=16),
        url=req_str(raw, "url", max_len=4096),
        count=count,
    )


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
            req = parse_authorize(doc, trace_id=trace_id(request), extra_fields=("dpop", "audience"))
            # Only a configured enforcement point may name its resource: it restricts which
            # tokens pass (an OAuth access token is minted for exactly one resource).
            audience = req_str(doc, "audience", max_len=2048, required=False) or None
        except InvalidRequest as bad:  # a forged task token is recorded whatever the body holds
            await run_in_threadpool(self.rt.broker.refuse_body, token, bad)
            raise
        req = replace(req, audience=audience)
        proof = _proof(doc.get("dpop"))
        result = await run_in_threadpool(self.rt.broker.authorize, token, req, proof)
        body: dict[str, Any] = {"decision": result.decision.to_dict(), "task": task_fields(result.task)}
        if result.credential is not None:
            c = result.credential
            body["credential"] = {
                "lease_id": c.lease_id,
                "for_agent": c.for_agent,
                "for_enforcer": c.for_enforcer,
            }
        return JSONResponse(body, headers={"cache-control": "no-store"})

    async def visible(self, request: Request) -> Response:
        _, doc = await self._doc(request)
        token = bearer(request)
        check_fields(doc, ("action", "resources", "dpop", "audience"))
        resources = doc.get("resources")
        if not isinstance(resources, list) or not all(isinstance(r, str) for r in resources):
            raise InvalidRequest(
                "`resources` must be a list of catalog ids", code="invalid_field", field="resources"
            )
        found = await run_in_threadpool(
            service.visible,
            self.rt,
            token,
            req_str(doc, "action", max_len=64),
            resources,
            _proof(doc.get("dpop")),
            req_str(doc, "audience", max_len=2048, required=False) or None,
        )
        return JSONResponse({"resources": found})

    async def token(self, request: Request) -> Response:
        _, doc = await self._doc(request)
        token = bearer(request)
        check_fields(doc, ("audience",))
        audience = req_str(doc, "audience", max_len=2048, required=False) or None
        found = await run_in_threadpool(service.check_token, self.rt, token, audience)
        return JSONResponse(found, headers={"cache-control": "no-store"})

    async def calls(self, request: Request) -> Response:
        enforcer, doc = await self._doc(request)
        check_fields(doc, ("type", "task", "decision_id", "lease_id", "trace_id", "payload"))
        payload, task = doc.get("payload") or {}, doc.get("task") or {}
        if not isinstance(payload, dict) or not isinstance(task, dict):
            raise InvalidRequest("`payload` and `task` must be objects", code="invalid_field")
        await run_in_threadpool(
            service.record_call,
            self.rt,
            req_str(doc, "type", max_len=48),
            task,
            req_str(doc, "decision_id", max_len=64, required=False) or None,
            req_str(doc, "lease_id", max_len=64, required=False) or None,
            req_str(doc, "trace_id", max_len=64, required=False) or None,
            payload,
            enforcer,
        )
        return JSONResponse({"recorded": True})

    async def arguments(self, request: Request) -> Response:
        _, doc = await self._doc(request)
        check_fields(doc, ("resources",))
        resources = doc.get("resources")
        if not isinstance(resources, list) or not all(isinstance(r, str) for r in resources):
            raise InvalidRequest(
                "`resources` must be a list of catalog ids", code="invalid_field", field="resources"
            )
        found = service.tool_arguments(self.rt, resources)
        body = {rid: {n: spec.to_dict() for n, spec in specs.items()} for rid, specs in found.items()}
        return JSONResponse({"arguments": body})

    async def tools(self, request: Request) -> Response:
        _, doc = await self._doc(request)
        check_fields(doc, ("server", "tools"))
        tools = doc.get("tools")
        if not isinstance(tools, dict) or not all(isinstance(v, dict) for v in tools.values()):
            raise InvalidRequest(
                "`tools` must map tool names to definitions", code="invalid_field", field="tools"
            )
        states = await run_in_threadpool(self.pins.observe, req_str(doc, "server", max_len=128), tools)
        return JSONResponse({"states": states})


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
