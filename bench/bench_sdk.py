"""SDK overhead: `task.check`/`@guard` vs a raw HTTP authorize, against a real broker.

    .venv/bin/python bench/bench_sdk.py [N]

Starts the `tether demo` stack's broker (uvicorn, SQLite, one process) and measures, on
the same task and the same allowed read (`read tickets.queue`, no credential minted):

  raw httpx POST /v1/authorize                  the floor: HTTP + broker
  sdk task.check (no DPoP)                      + request building, decision parsing
  sdk @guard call (no DPoP)                     + argument binding, contextvar lookup
  sdk task.check (DPoP, bound token)            + an ES256 proof per request, verified by the broker
  sdk internals only (MockTransport)            the SDK's own cost with no network or broker
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _stats import measure, summary, table

from tether.demo.stack import AGENTS, register_workloads, running_stack
from tether.sdk import Client, Task, WorkloadApiSvid, guard

N = int(sys.argv[1]) if len(sys.argv) > 1 else 500
BATCH = 100  # the shipped `risk-call-burst` policy denies a task's 121st call in a minute
SCOPE = [("read", "tickets")]
BODY = {"action": "read", "resource": "tickets.queue", "arguments": {"q": "refund"}}


@guard(action="read", resource="tickets.queue")
def read_queue(q: str) -> None:
    return None


Variant = tuple[str, Client, Callable[[Task], Callable[[], object]]]


def round_robin(variants: list[Variant]) -> list[tuple[str, list[float]]]:
    """N samples per variant, a fresh task every batch (not timed), variants interleaved
    batch by batch so that drift on a shared box (audit log growth, neighbours) hits all alike."""
    out: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    while any(len(v) < N for v in out.values()):
        for name, client, make in variants:
            with client.task("support.triage", SCOPE, ttl=600) as task:
                out[name] += measure(make(task), min(BATCH - 10, N - len(out[name])), warmup=10)
    return list(out.items())


def main() -> None:
    rows: list[tuple[str, list[float]]] = []
    with running_stack() as stack:
        register_workloads(stack)
        svid = WorkloadApiSvid(stack.workload_socket, spiffe_id=AGENTS["orchestrator"])
        aud = stack.settings.broker_audience
        with Client(stack.url, audience=aud, svid=svid, dpop=False) as plain, httpx.Client() as raw:

            def raw_post(task: Task) -> Callable[[], object]:
                headers = {"Authorization": f"Bearer {task.token}"}
                url = stack.url + "/v1/authorize"
                return lambda: raw.post(url, json=BODY, headers=headers).raise_for_status()

            def guarded(task: Task) -> Callable[[], object]:
                def call() -> None:
                    with task.bind():
                        read_queue("refund")

                return call

            def check(task: Task) -> Callable[[], object]:
                return lambda: task.check("read", "tickets.queue", {"q": "refund"})

            with Client(stack.url, audience=aud, svid=svid, dpop=True) as bound:
                rows += round_robin(
                    [
                        ("raw httpx POST /v1/authorize", plain, raw_post),
                        ("sdk task.check (no DPoP)", plain, check),
                        ("sdk @guard call (no DPoP)", plain, guarded),
                        ("sdk task.check (DPoP proof per request)", bound, check),
                    ]
                )

    answer = {"decision": "allow", "decision_id": "dec_x", "reasons": [], "policy_version": "v"}
    opened = {"task_id": "tsk_x", "task_token": "a.b.c", "expires_at": 1e10, "scope": [], "depth": 0}
    mock = httpx.Client(
        transport=httpx.MockTransport(
            lambda r: httpx.Response(
                201 if r.url.path == "/v1/tasks" else 200,
                json=opened if r.url.path == "/v1/tasks" else answer,
            )
        )
    )
    rows.append(
        (
            "httpx alone on MockTransport",
            measure(lambda: mock.post("http://broker/v1/authorize", json=BODY), N * 4),
        )
    )
    for dpop in (False, True):
        with (
            Client("http://broker", audience="a", svid="x.y.z", http=mock, dpop=dpop) as c,
            c.task("support.triage", SCOPE) as t,
        ):
            tag = "DPoP" if dpop else "no DPoP"
            rows.append(
                (
                    f"sdk task.check on MockTransport ({tag})",
                    measure(lambda t=t: t.check("read", "tickets.queue", {"q": "refund"}), N * 4),
                )
            )
            with t.bind():
                rows.append(
                    (
                        f"sdk @guard call on MockTransport ({tag})",
                        measure(lambda: read_queue("refund"), N * 4),
                    )
                )
    table(f"SDK authorize overhead (N={N}, one broker process, SQLite)", rows)
    raw_med = summary(rows[0][1])[0]
    for name, samples in rows[1:4]:
        print(f"  {name}: +{summary(samples)[0] - raw_med:.0f} µs median over raw HTTP")


if __name__ == "__main__":
    main()
