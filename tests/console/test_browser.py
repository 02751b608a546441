"""The console in a real browser (Playwright driving Debian's chromium) against real processes.

A broker process, the demo CRM (a resource server that accepts only tether credentials),
the test OIDC issuer, and real agents over the Workload API: an orchestrator delegates
to a reader, which reads the CRM with a short-lived credential; a refund waits for a
human. The operator signs in through the issuer, sees the tree, approves the refund (the
agent's blocked call then goes through) and pulls the kill switch (the CRM then refuses
the reader's credential).

Set ``TETHER_CONSOLE_SCREENSHOTS=docs/console`` to refresh the screenshots in the docs;
page load times are printed (``-s``) and written next to the screenshots.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tether.demo.stack import AGENTS, Stack, _prepare, free_port, register_workloads, start_broker, start_crm
from tether.sdk import Client, WorkloadApiSvid, guard
from tether.testing.oidc import TestOidcIssuer

CHROMIUM = os.environ.get("TETHER_CHROMIUM", "/usr/bin/chromium")
XSS = "<script>alert('xss')</script> javascript:alert(1)"
USERS = {"alice": {"email": "alice@example.com", "groups": ["ops-admins"]}}
REVOCATION_BOUND = 15.0

pytestmark = pytest.mark.timeout(180)


@guard(action="tool:call", resource="billing.refund", wait_for_approval=60)
def refund(ticket_id: str, amount_cents: int, note: str) -> dict[str, Any]:
    return {"ticket_id": ticket_id, "refunded_cents": amount_cents}


def wait_until(pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class World:
    def __init__(self, stack: Stack, idp: TestOidcIssuer, shots: Path) -> None:
        self.stack, self.idp, self.shots = stack, idp, shots
        self.load_ms: dict[str, float] = {}

    def client(self, agent: str) -> Client:
        s = self.stack.settings
        return Client(
            self.stack.url,
            audience=s.broker_audience,
            dpop=False,
            svid=WorkloadApiSvid(self.stack.workload_socket, spiffe_id=AGENTS[agent]),
        )

    def visit(self, page: Page, path: str, name: str) -> None:
        page.goto(self.stack.url + path)
        self.measure(page, name)

    def measure(self, page: Page, name: str) -> None:
        page.wait_for_load_state("load")
        ms = page.evaluate(
            "() => { const n = performance.getEntriesByType('navigation')[0];"
            " return n ? n.loadEventEnd - n.startTime : -1; }"
        )
        self.load_ms[name] = round(float(ms), 1)

    def shot(self, page: Page, name: str, *, full: bool = True) -> None:
        page.screenshot(path=str(self.shots / f"{name}.png"), full_page=full)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make chromium` (scripts/ensure-chromium)")
    state = tmp_path_factory.mktemp("console-browser") / "state"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with TestOidcIssuer(
        users=USERS, client_id="tether-console", redirect_uris=[f"{base}/console/auth/callback"]
    ) as idp:
        _prepare(state, port)
        with (state / "tether.toml").open("a") as f:
            f.write(
                f'\n[console.oidc]\nissuer = "{idp.issuer}"\nclient_id = "tether-console"\n'
                '\n[console.roles]\nadmin = ["ops-admins"]\n'
            )
        from tether.config import load_settings

        stack = Stack(state, load_settings(state, environ={}), base)
        try:
            start_broker(stack)
            register_workloads(stack)
            start_crm(stack)
            out = Path(os.environ.get("TETHER_CONSOLE_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
            out.mkdir(parents=True, exist_ok=True)
            w = World(stack, idp, out)
            yield w
            (out / "load-times.json").write_text(json.dumps(w.load_ms, indent=2) + "\n")
            print("\nconsole page load times (ms):", json.dumps(w.load_ms))
        finally:
            stack.stop()
            shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-background-networking",
                "--disable-gpu",
                "--disable-dev-shm-usage",
            ],
        )
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser: Browser, world: World) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    dialogs: list[str] = []
    pg.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    pg.dialogs = dialogs  # type: ignore[attr-defined]
    yield pg
    context.close()


def test_no_session_shows_the_login_page(browser: Browser, world: World):
    """A fresh browser asking for a task page lands on the sign-in page, with no data."""
    ctx = browser.new_context()
    pg = ctx.new_page()
    pg.goto(world.stack.url + "/console/tasks")
    expect(pg.get_by_role("heading", name="Sign in to the Tether console")).to_be_visible()
    world.measure(pg, "login")
    world.shot(pg, "login")
    ctx.close()


def test_operator_signs_in_approves_and_pulls_the_kill_switch(page: Page, world: World):
    """Sign in via OIDC, see the tree, approve the blocked refund, kill the tree, the CRM refuses."""
    stack = world.stack
    page.goto(stack.url + "/console/tasks")
    page.get_by_role("link", name="Sign in with your identity provider").click()
    page.get_by_role("button", name="Sign in as alice").click()
    page.wait_for_url("**/console/tasks")
    expect(page.locator("header .who")).to_contain_text("alice@example.com")

    # A real multi-agent flow: orchestrator → reader, a credential used at the CRM.
    orchestrator, reader = world.client("orchestrator"), world.client("reader")
    root = orchestrator.task(
        "support.triage", [("read", "crm"), ("read", "tickets")], ttl=300, description=f"triage {XSS}"
    )
    offer = root.delegate(AGENTS["reader"], [("read", "crm.customers")], ttl=120)
    reader_task = reader.task(delegation=offer)
    cred = reader_task.authorize("read", "crm.customers").credential
    assert cred is not None and cred.token
    crm = stack.crm_url + "/customers/42"
    assert httpx.get(crm, headers={"Authorization": f"Bearer {cred.token}"}).status_code == 200

    # The list is live: the new task shows up without a reload.
    expect(page.locator("#rows")).to_contain_text(root.id, timeout=15000)
    expect(page.locator("#live-status")).to_have_text("live")
    world.measure(page, "tasks")
    world.shot(page, "tasks")

    page.get_by_role("link", name=root.id).click()
    expect(page.locator("svg.tree g.node")).to_have_count(2)
    expect(page.locator("ol.timeline")).to_contain_text("decision allow read crm.customers")
    expect(page.locator(".description")).to_contain_text("<script>")  # shown as text, never run
    world.measure(page, "task")
    world.shot(page, "task")

    # A refund blocks on a human; the agent's call waits in its own thread.
    outcome: dict[str, Any] = {}

    def agent_refund() -> None:
        try:
            with orchestrator.task("billing.refund", [("tool:call", "billing.refund")], ttl=120):
                outcome["result"] = refund("T-1042", 1500, XSS)
        except Exception as exc:
            outcome["error"] = repr(exc)

    world.visit(page, "/console/approvals", "approvals")
    worker = threading.Thread(target=agent_refund, daemon=True)
    worker.start()
    row = page.locator("#rows tbody tr", has_text="billing.refund")
    expect(row).to_be_visible(timeout=15000)  # arrives over the live stream
    world.shot(page, "approvals")
    row.get_by_role("link").first.click()
    expect(page.locator("p.why")).to_have_text("refunds need a human")
    expect(page.locator("pre.args")).to_contain_text("T-1042")
    assert page.locator("a[href^='javascript:']").count() == 0
    world.measure(page, "approval")
    world.shot(page, "approval")
    page.get_by_label("Comment (optional)").fill("ticket T-1042 verified")
    started = time.monotonic()
    page.get_by_role("button", name="Approve this call once").click()
    expect(page.locator("dd.decided")).to_contain_text("oidc:alice (alice@example.com)")
    worker.join(timeout=30)
    assert outcome.get("result") == {"ticket_id": "T-1042", "refunded_cents": 1500}, outcome
    world.load_ms["approve_to_call_done"] = round((time.monotonic() - started) * 1000, 1)

    # Kill switch on the root task: confirmation names the tree, then every lease is revoked.
    world.visit(page, "/console/kill", "kill")
    page.get_by_label("a task").check()
    page.get_by_label("Task id or SPIFFE ID").fill(root.id)
    page.get_by_role("button", name="Show what will be revoked…").click()
    confirm = page.locator("section.confirm")
    expect(confirm).to_contain_text(root.id)
    expect(confirm).to_contain_text(reader_task.id)
    expect(confirm).to_contain_text(cred.lease_id)
    world.shot(page, "kill-confirm")
    page.locator("#kill-confirm").click()
    expect(page.locator("#kill-result")).to_contain_text("Every lease revoked")
    world.load_ms["kill_switch_all_leases_revoked"] = float(page.locator("#kill-ms").inner_text().split()[0])
    world.shot(page, "kill-done")
    wait_until(
        lambda: httpx.get(crm, headers={"Authorization": f"Bearer {cred.token}"}).status_code == 401,
        REVOCATION_BOUND,
        "the CRM to refuse the revoked credential",
    )
    assert page.dialogs == []  # type: ignore[attr-defined]  (no injected script ever ran)


def test_other_pages_render(page: Page, world: World):
    """Decisions, policy and audit pages render for the signed-in operator."""
    world.visit(page, "/console/decisions", "decisions")
    expect(page.locator("#rows")).to_contain_text("crm.customers")
    world.shot(page, "decisions", full=False)
    world.visit(page, "/console/policy", "policy")
    expect(page.locator("#policy-version")).to_contain_text("sha256:")
    world.shot(page, "policy")
    world.visit(page, "/console/audit?verify=1", "audit")
    expect(page.locator("#verify-status")).to_contain_text("every chain verifies")
    world.shot(page, "audit", full=False)


def test_console_keeps_working_when_the_event_stream_drops(page: Page, world: World):
    """With the SSE stream cut, the list says so and still updates by polling."""
    page.route("**/console/events", lambda route: route.abort())
    try:
        world.visit(page, "/console/tasks", "tasks_no_sse")
        expect(page.locator("#live-status")).to_contain_text("interrupted", timeout=10000)
        with world.client("orchestrator").task("support.triage", [("read", "tickets")], ttl=60) as task:
            expect(page.locator("#rows")).to_contain_text(task.id, timeout=15000)
    finally:
        page.unroute("**/console/events")
