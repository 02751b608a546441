"""Child process for the kill -9 test: start a broker and mint one PostgreSQL credential.

Run as ``python _crash_child.py STATE_DIR STORE_URL``; ``TETHER_FAILPOINT`` (set by the test)
kills the process with SIGKILL at one step of the mint. Prints ``minted`` otherwise.
"""

from __future__ import annotations

import sys

from tether.broker import AuthorizeRequest, OpenTaskRequest
from tether.config import load_settings
from tether.model import Grant, Workload
from tether.runtime import Runtime

rt = Runtime.start(
    load_settings(
        sys.argv[1],
        environ={},
        overrides={"store": sys.argv[2], "environment": "prod", "identity": {"dpop": "optional"}},
    )
)
agent = Workload("spiffe://support.example/analyst", "support.example", "test")
opened = rt.broker.open_task(
    agent, OpenTaskRequest("support.triage", "crash test", (Grant("read", "analytics.orders"),), 600)
)
result = rt.broker.authorize(opened.token, AuthorizeRequest("read", "analytics.orders"))
# On a deny, say why (the connector's message carries the SQLSTATE) so a failure is diagnosable.
reasons = "; ".join(r.message for r in result.decision.reasons)
print("minted" if result.credential else f"denied {result.decision.code}: {reasons}", flush=True)
rt.close()
