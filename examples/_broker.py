"""Shared by the examples: a throwaway broker (the `tether demo` stack) and a client for one agent.

In your own code you would run `tether up`, register your agent once
(`tether workload register …`) and use `Client.local(spiffe_id=…)` instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tether.demo.stack import AGENTS, register_workloads, running_stack
from tether.sdk import Client, WorkloadApiSvid


@contextlib.contextmanager
def broker_client(agent: str = "orchestrator", *, dpop: bool = True) -> Iterator[Client]:
    with running_stack() as stack:
        register_workloads(stack)
        svid = WorkloadApiSvid(stack.workload_socket, spiffe_id=AGENTS[agent])
        with Client(stack.url, audience=stack.settings.broker_audience, svid=svid, dpop=dpop) as client:
            client.stack = stack  # type: ignore[attr-defined]  # the MCP example needs the broker URL
            yield client
