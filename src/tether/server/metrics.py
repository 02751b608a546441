"""``GET /metrics``: Prometheus text (see ``tether.metrics``), for allowed addresses only.

On the API port, so a load balancer or Kubernetes needs no second port; the scraper's
address must be in ``metrics.allow`` (loopback by default), since counts of tasks,
leases and decisions tell an outsider how the broker is used. Behind a proxy the
address checked is the proxy's: list it, or scrape each replica directly.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from tether import metrics
from tether.errors import Forbidden, NotFound
from tether.runtime import Runtime


async def metrics_endpoint(request: Request) -> Response:
    rt: Runtime = request.app.state.runtime
    cfg = rt.settings.metrics
    if not cfg.enabled:
        raise NotFound("metrics are disabled (`metrics.enabled = false`)", code="not_found")
    host = request.client.host if request.client else None
    if not cfg.allows(host):
        raise Forbidden(
            f"`{host}` may not read metrics; add its network to `metrics.allow`", code="metrics_forbidden"
        )
    body, content_type = await run_in_threadpool(metrics.render, rt)  # reads the store
    return Response(body, headers={"content-type": content_type, "cache-control": "no-store"})
