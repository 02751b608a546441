"""The asyncio client: async with, guarded async and sync tools, cascade on close."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tether.errors import Forbidden
from tether.sdk import AsyncTask, Denied, guard

TRIAGE = [("read", "crm"), ("read", "tickets"), ("write", "tickets.comment")]


@guard(action="read", resource="tickets")
async def read_tickets() -> str:
    return "tickets"


@guard(action="write", resource="tickets.comment")
def comment(text: str) -> str:
    return f"commented {text}"


def test_async_with_closes_the_task(make_async_client: Any, task_state: Any):
    """`async with client.task(...)` closes the task at the end of the block."""

    async def main() -> str:
        async with make_async_client() as client, client.task("support.triage", TRIAGE, ttl=60) as task:
            assert isinstance(task, AsyncTask)
            assert await read_tickets() == "tickets"
            return task.id

    assert task_state(asyncio.run(main())) == "closed"


def test_async_deny_raises_typed_error(make_async_client: Any):
    """A denied async call raises Denied with the broker's code."""

    async def main() -> None:
        async with make_async_client() as client, client.task("support.triage", TRIAGE, ttl=60) as task:
            await task.authorize("write", "tickets")

    with pytest.raises(Denied) as exc:
        asyncio.run(main())
    assert exc.value.code == "out_of_scope"


def test_sync_tool_in_worker_thread_uses_the_task_loop(make_async_client: Any):
    """A sync guarded tool run by a framework in a worker thread is authorized via the task's loop."""

    async def main() -> str:
        async with make_async_client() as client, client.task("support.triage", TRIAGE, ttl=60):
            result: str = await asyncio.to_thread(comment, "hi")
            return result

    assert asyncio.run(main()) == "commented hi"


def test_sync_tool_on_the_loop_thread_is_refused(make_async_client: Any):
    """A sync guarded tool called on the event loop itself is refused instead of deadlocking."""

    async def main() -> None:
        async with make_async_client() as client, client.task("support.triage", TRIAGE, ttl=60):
            comment("hi")

    with pytest.raises(Forbidden) as exc:
        asyncio.run(main())
    assert exc.value.code == "blocking_call_in_event_loop"


def test_async_delegation_cascade(make_async_client: Any, task_state: Any):
    """An async parent delegates; the child's task closes with the parent's."""

    async def main() -> str:
        async with (
            make_async_client() as client,
            make_async_client("reader") as reader,
            client.task("support.triage", TRIAGE, ttl=60) as parent,
        ):
            offer = await parent.delegate("spiffe://support.example/reader", [("read", "crm")], ttl=30)
            child = await reader.task(delegation=offer)
            assert (await child.authorize("read", "crm.customers")).allowed
            return child.id

    assert task_state(asyncio.run(main())) == "closed"
