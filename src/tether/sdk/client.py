"""Clients for the broker's HTTP API: :class:`Client` (sync) and :class:`AsyncClient`.

A client knows where the broker is and how to get this agent's JWT-SVID; it opens
tasks. Everything else happens on the task (``task.authorize``, ``task.delegate`` …).

    client = Client.local()                       # broker and Workload API of ./.tether
    client = Client("http://127.0.0.1:8421", audience="spiffe://tether.local/tether",
                    svid=Path("/run/spire/svid.jwt"))

Every failure is a ``TetherError`` carrying the broker's ``code``; a broker that cannot
be reached or answers something unreadable is ``Unavailable`` — never an allow.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from tether.errors import ConfigError, Unauthenticated, Unavailable
from tether.sdk import _wire as wire
from tether.sdk.dpop import make_proof, new_key
from tether.sdk.errors import error_from_response
from tether.sdk.local import WORKLOAD_SOCKET, local_broker  # noqa: F401  (re-exported)
from tether.sdk.models import Delegation, GrantLike, grants, ttl_seconds
from tether.sdk.svid import CachedSvid, SvidSource, WorkloadApiSvid, as_source
from tether.sdk.task import AsyncTask, AsyncTaskOpener, Task

__all__ = ["AsyncClient", "Client", "local_broker"]

SvidLike = SvidSource | str | Path | Callable[[str], str]


def _dpop_key(dpop: bool | Any) -> Any:
    if dpop is False or dpop is None:
        return None
    if dpop is True:
        # One key per client, in memory only: a task token stolen from logs or a proxy is
        # useless without it (RFC 9449).
        return new_key()
    return dpop


class _Base:
    def __init__(self, url: str, svid: SvidLike | None, audience: str | None, dpop: bool | Any) -> None:
        self.url = url.rstrip("/")
        self.audience = audience
        self._svid: CachedSvid | None = CachedSvid(as_source(svid)) if svid is not None else None
        self._dpop = _dpop_key(dpop)

    def _request(
        self,
        http: httpx.Client | httpx.AsyncClient,
        method: str,
        path: str,
        token: str,
        json: Any,
        task_token: bool,
    ) -> httpx.Request:
        request = http.build_request(method, self.url + path, json=json)
        if self._dpop is None:
            request.headers["Authorization"] = f"Bearer {token}"
            return request
        # The proof names this exact method and URL; for a task token it also carries the
        # token's hash (``ath``), so it cannot be replayed with another token.
        htu = str(request.url.copy_with(query=None, fragment=None))
        request.headers["DPoP"] = make_proof(
            self._dpop, method, htu, access_token=token if task_token else None
        )
        request.headers["Authorization"] = f"{'DPoP' if task_token else 'Bearer'} {token}"
        return request

    def _svid_token(self) -> str:
        if self._svid is None:
            raise ConfigError(
                "this client has no SVID source; pass `svid=` or use `Client.local()`",
                code="svid_unavailable",
            )
        if not self.audience:
            raise ConfigError(
                "pass the broker's `audience` (its SPIFFE ID, e.g. `spiffe://tether.local/tether`)",
                code="audience_required",
            )
        return self._svid.fetch(self.audience)

    @staticmethod
    def _open_body(
        intent: str | None,
        scope: Iterable[GrantLike] | None,
        ttl: int | float | timedelta | None,
        description: str,
        on_behalf_of: str | None,
        delegation: Delegation | str | None,
    ) -> dict[str, Any]:
        if delegation is None and not intent:
            raise ConfigError("name the task's `intent` (or redeem a `delegation`)", code="intent_required")
        return wire.OpenTaskRequest(
            intent=intent or None,
            description=description or None,
            scope=grants(scope) if scope is not None else None,
            ttl_seconds=ttl_seconds(ttl) if ttl is not None else None,
            delegation=(delegation.id if isinstance(delegation, Delegation) else delegation) or None,
            delegator_token=on_behalf_of or None,
        ).to_wire()

    @staticmethod
    def _decode(response: httpx.Response) -> dict[str, Any]:
        if response.status_code >= 400:
            raise error_from_response(response)
        try:
            body = response.json()
        except ValueError as exc:
            raise Unavailable(
                "the broker's answer is not JSON; check the broker URL", code="bad_broker_response"
            ) from exc
        if not isinstance(body, dict):
            raise Unavailable("the broker's answer is not a JSON object", code="bad_broker_response")
        return body


def _unreachable(url: str, exc: Exception) -> Unavailable:
    return Unavailable(
        f"cannot reach the broker at `{url}` ({type(exc).__name__}); is `tether up` running?",
        code="broker_unreachable",
    )


class Client(_Base):
    """Synchronous client. ``http`` lets tests pass any ``httpx.Client`` (e.g. Starlette's TestClient)."""

    def __init__(
        self,
        url: str = "",
        *,
        svid: SvidLike | None = None,
        audience: str | None = None,
        timeout: float = 10.0,
        http: httpx.Client | None = None,
        dpop: bool | Any = True,
    ) -> None:
        super().__init__(url, svid, audience, dpop)
        self._owns_http = http is None
        self.http = http or httpx.Client(timeout=timeout)

    @classmethod
    def local(
        cls, state_dir: str | Path | None = None, *, spiffe_id: str | None = None, **kwargs: Any
    ) -> Client:
        """The broker of a local state directory, with SVIDs from its Workload API."""
        url, audience, socket = local_broker(state_dir)
        return cls(url, svid=WorkloadApiSvid(socket, spiffe_id=spiffe_id), audience=audience, **kwargs)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> Client:
        """``TETHER_URL`` + ``TETHER_AUDIENCE`` + ``TETHER_SVID_FILE``/``TETHER_SVID``, else ``local()``."""
        env = os.environ if environ is None else environ
        if not env.get("TETHER_URL"):
            return cls.local(env.get("TETHER_STATE_DIR"), spiffe_id=env.get("TETHER_SPIFFE_ID"), **kwargs)
        svid: SvidLike | None = (
            Path(env["TETHER_SVID_FILE"]) if env.get("TETHER_SVID_FILE") else env.get("TETHER_SVID")
        )
        return cls(env["TETHER_URL"], svid=svid, audience=env.get("TETHER_AUDIENCE"), **kwargs)

    def _call(
        self, method: str, path: str, *, token: str, json: Any = None, task_token: bool = True
    ) -> dict[str, Any]:
        try:
            response = self.http.send(self._request(self.http, method, path, token, json, task_token))
        except httpx.HTTPError as exc:
            raise _unreachable(self.url, exc) from exc
        return self._decode(response)

    def task(
        self,
        intent: str | None = None,
        scope: Iterable[GrantLike] | None = None,
        *,
        ttl: int | float | timedelta | None = None,
        description: str = "",
        on_behalf_of: str | None = None,
        delegation: Delegation | str | None = None,
    ) -> Task:
        """Open a task now; use it as ``with client.task(...) as task:`` so it closes on exit.

        ``on_behalf_of`` is the delegating human's OIDC ID token; ``delegation`` redeems an
        offer a parent task made to this agent (scope and ttl then narrow it further).
        """
        body = self._open_body(intent, scope, ttl, description, on_behalf_of, delegation)
        try:
            return Task(
                self, self._call("POST", "/v1/tasks", token=self._svid_token(), json=body, task_token=False)
            )
        except Unauthenticated as exc:
            if self._svid is None or exc.code.startswith("dpop") or exc.code.startswith("delegator"):
                raise
            # The cached SVID may have been rotated away under us: one fresh try, no more.
            self._svid.invalidate()
            return Task(
                self, self._call("POST", "/v1/tasks", token=self._svid_token(), json=body, task_token=False)
            )

    def close(self) -> None:
        if self._owns_http:
            self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """Asyncio client; ``http`` may be any ``httpx.AsyncClient`` (e.g. on ``httpx.ASGITransport``)."""

    def __init__(
        self,
        url: str = "",
        *,
        svid: SvidLike | None = None,
        audience: str | None = None,
        timeout: float = 10.0,
        http: httpx.AsyncClient | None = None,
        dpop: bool | Any = True,
    ) -> None:
        super().__init__(url, svid, audience, dpop)
        self._owns_http = http is None
        self.http = http or httpx.AsyncClient(timeout=timeout)

    @classmethod
    def local(
        cls, state_dir: str | Path | None = None, *, spiffe_id: str | None = None, **kwargs: Any
    ) -> AsyncClient:
        url, audience, socket = local_broker(state_dir)
        return cls(url, svid=WorkloadApiSvid(socket, spiffe_id=spiffe_id), audience=audience, **kwargs)

    async def _call(
        self, method: str, path: str, *, token: str, json: Any = None, task_token: bool = True
    ) -> dict[str, Any]:
        try:
            request = self._request(self.http, method, path, token, json, task_token)
            response = await self.http.send(request)
        except httpx.HTTPError as exc:
            raise _unreachable(self.url, exc) from exc
        return self._decode(response)

    async def _svid_token_async(self) -> str:
        import asyncio

        # A source may block (a socket, a file, user code): keep it off the event loop.
        return await asyncio.to_thread(self._svid_token)

    def task(
        self,
        intent: str | None = None,
        scope: Iterable[GrantLike] | None = None,
        *,
        ttl: int | float | timedelta | None = None,
        description: str = "",
        on_behalf_of: str | None = None,
        delegation: Delegation | str | None = None,
    ) -> AsyncTaskOpener:
        """``async with client.task(...) as task:`` (closes on exit) or ``task = await client.task(...)``."""
        body = self._open_body(intent, scope, ttl, description, on_behalf_of, delegation)

        async def open_() -> AsyncTask:
            try:
                svid = await self._svid_token_async()
                return AsyncTask(
                    self, await self._call("POST", "/v1/tasks", token=svid, json=body, task_token=False)
                )
            except Unauthenticated as exc:
                if self._svid is None or exc.code.startswith("dpop") or exc.code.startswith("delegator"):
                    raise
                self._svid.invalidate()
                svid = await self._svid_token_async()
                return AsyncTask(
                    self, await self._call("POST", "/v1/tasks", token=svid, json=body, task_token=False)
                )

        return AsyncTaskOpener(open_)

    async def aclose(self) -> None:
        if self._owns_http:
            await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
