"""Cost of the wire models on the authorize hot path: parsing the body, rendering the answer.

Compares the hand-written parser the API used before the wire models (kept here, frozen,
for the comparison) with the model-based one the server uses now, on a representative
authorize body (action, resource, one argument, a request context), and the answer as
``JSONResponse(decision.to_dict())`` (before) against ``server.app.reply`` through
``AuthorizeResponse`` (now). CPU time per call (``measure_cpu``), so a loaded machine
moves both sides alike:

    python bench/bench_wire.py [-n 3000]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _stats import measure_cpu, table
from starlette.responses import JSONResponse

from tether.broker import AuthorizeRequest
from tether.errors import InvalidRequest
from tether.model import Decision, Outcome, Reason
from tether.server.app import reply
from tether.server.parsing import parse_authorize, parse_json_object
from tether.wire import models as w

BODY = {
    "action": "read",
    "resource": "tickets.queue",
    "arguments": {"ticket": "T-1"},
    "context": {"method": "GET", "path": "/tickets/T-1"},
}
RAW = json.dumps(BODY).encode()


def _legacy_str(doc: Mapping[str, Any], key: str, max_len: int = 256, required: bool = True) -> str:
    value = doc.get(key)
    if value is None:
        if required:
            raise InvalidRequest(f"missing field `{key}`", code="missing_field")
        return ""
    if not isinstance(value, str) or len(value) > max_len:
        raise InvalidRequest(f"`{key}` is invalid", code="invalid_field")
    return value


def legacy_parse(doc: Mapping[str, Any]) -> AuthorizeRequest:
    """The field-by-field parser of ``server/parsing.py`` before the wire models."""
    for key in doc:
        if key not in ("action", "resource", "arguments", "context"):
            raise InvalidRequest(f"unknown field `{key}`", code="unknown_field")
    ctx = doc.get("context") or {}
    if not isinstance(ctx, dict):
        raise InvalidRequest("`context` must be an object", code="invalid_field")
    for key in ctx:
        if key not in ("method", "path"):
            raise InvalidRequest(f"unknown field `context.{key}`", code="unknown_field")
    args = doc.get("arguments") or {}
    if not isinstance(args, dict) or len(args) > 64:
        raise InvalidRequest("`arguments` must be an object", code="invalid_field")
    return AuthorizeRequest(
        action=_legacy_str(doc, "action", 64),
        resource=_legacy_str(doc, "resource"),
        arguments=args,
        method=_legacy_str(ctx, "method", 16, required=False),
        path=_legacy_str(ctx, "path", 4096, required=False),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=3000, help="iterations per row")
    n = ap.parse_args().n
    decision = Decision("dec_x", Outcome.ALLOW, (Reason("p1", "ok"),), "sha256:abc")
    assert legacy_parse(parse_json_object(RAW)) == parse_authorize(parse_json_object(RAW), trace_id=None)
    old_body = JSONResponse(decision.to_dict()).body
    assert reply(w.AuthorizeResponse, decision.to_dict()).body == old_body  # same bytes on the wire
    table(
        f"authorize body and answer, {n} iterations (CPU time)",
        [
            ("decode + hand parse (before)", measure_cpu(lambda: legacy_parse(parse_json_object(RAW)), n)),
            (
                "decode + model parse (now)",
                measure_cpu(lambda: parse_authorize(parse_json_object(RAW), trace_id=None), n),
            ),
            (
                "render: JSONResponse(to_dict()) (before)",
                measure_cpu(lambda: JSONResponse(decision.to_dict()), n),
            ),
            (
                "render: reply(AuthorizeResponse) (now)",
                measure_cpu(lambda: reply(w.AuthorizeResponse, decision.to_dict()), n),
            ),
        ],
    )


if __name__ == "__main__":
    main()
