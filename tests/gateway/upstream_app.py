"""A real upstream for the HTTP gateway tests: records what it received.

Run as ``python upstream_app.py PORT``. ``GET /_seen`` (called directly, not through
the gateway) returns every request recorded so far: method, path, query, headers, body
size, and the client's port (which connection it came on). Special paths: ``/big?n=N``
answers N bytes, ``/chunks?n=N`` answers N pieces of 1 KiB without a length (chunked),
``/close`` answers with ``Connection: close``, ``/slow?s=S`` answers after S seconds,
``/cookie`` sets a cookie and names a hop-by-hop header in ``Connection``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from urllib.parse import parse_qs

import uvicorn

SEEN: list[dict] = []


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    path = scope["path"]
    query = parse_qs(scope["query_string"].decode())
    headers = [(b"content-type", b"application/json")]
    if path == "/_seen":
        out = json.dumps(SEEN).encode()
    elif path == "/_reset":
        SEEN.clear()
        out = b"[]"
    else:
        SEEN.append(
            {
                "method": scope["method"],
                "path": path,
                "raw_path": (scope.get("raw_path") or b"").decode("latin-1"),
                "query": scope["query_string"].decode(),
                "headers": {k.decode().lower(): v.decode() for k, v in scope["headers"]},
                "body_bytes": len(body),
                "client_port": (scope.get("client") or ("", 0))[1],
            }
        )
        if path == "/chunks":
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            for _ in range(int(query["n"][0])):
                await send({"type": "http.response.body", "body": b"c" * 1024, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        if path == "/close":
            headers.append((b"connection", b"close"))
        if path == "/big":
            out = b"x" * int(query["n"][0])
        elif path == "/slow":
            await asyncio.sleep(float(query["s"][0]))
            out = b"{}"
        else:
            out = json.dumps({"ok": True, "path": path}).encode()
        if path == "/cookie":
            headers += [
                (b"set-cookie", b"session=upstream-secret"),
                (b"connection", b"x-internal"),
                (b"x-internal", b"hop"),
                (b"x-kept", b"yes"),
            ]
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [*headers, (b"content-length", str(len(out)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": out})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
