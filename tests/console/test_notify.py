"""The approval notifier against a real HTTP receiver: signed webhook, Slack, retries, audited failures."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from tether.audit import event as ev
from tether.runtime import Runtime
from tether.server.app import create_app
from tether.testing import capture_events, make_settings

SECRET = "s3cret-webhook-key-0123456789"


class Receiver:
    """A loopback HTTP server that records what it is sent and answers with ``status``."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def wait(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {n} requests, got {len(self.requests)}")
            time.sleep(0.02)
        return self.requests


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()


def _runtime(tmp_path: Path, domain: Any, receiver: Receiver, attempts: int = 3) -> Runtime:
    extra = f"""
[console]
public_url = "https://tether.example.com"

[console.notify]
webhook_url = "{receiver.url}/hook"
webhook_secret = "{SECRET}"
slack_url = "{receiver.url}/slack"
max_attempts = {attempts}
backoff_seconds = 0.05
"""
    return Runtime.start(make_settings(tmp_path / "state", domain=domain, config_extra=extra))


def _request_approval(rt: Runtime, domain: Any) -> str:
    with TestClient(create_app(rt)) as c:
        svid = domain.svid(domain.spiffe_id("billing-bot"), rt.settings.broker_audience)
        task = c.post(
            "/v1/tasks",
            json={
                "intent": "billing.refund",
                "scope": [{"action": "tool:call", "resource": "billing.refund"}],
            },
            headers={"Authorization": f"Bearer {svid}"},
        ).json()
        d = c.post(
            "/v1/authorize",
            json={
                "action": "tool:call",
                "resource": "billing.refund",
                "arguments": {"ticket_id": "T-9", "memo": "<!channel> <https://evil|click>"},
            },
            headers={"Authorization": f"Bearer {task['task_token']}"},
        ).json()
    return str(d["approval_id"])


def test_pending_approval_reaches_webhook_signed_and_slack_formatted(tmp_path, domain, receiver):
    """Both targets get the approval with a console link; the webhook's HMAC checks out."""
    rt = _runtime(tmp_path, domain, receiver)
    try:
        approval_id = _request_approval(rt, domain)
        reqs = {r["path"]: r for r in receiver.wait(2)}
    finally:
        rt.close()
    hook = reqs["/hook"]
    ts = hook["headers"]["X-Tether-Timestamp"]
    want = hmac.new(SECRET.encode(), ts.encode() + b"." + hook["body"], hashlib.sha256).hexdigest()
    assert hook["headers"]["X-Tether-Signature"] == f"sha256={want}"
    body = json.loads(hook["body"])
    link = f"https://tether.example.com/console/approvals/{approval_id}"
    assert body["approval_id"] == approval_id and body["url"] == link and body["type"] == "approval.pending"
    slack = json.loads(reqs["/slack"]["body"])
    text = json.dumps(slack)
    assert link in text and "approve?" not in text and "refunds need a human" in text


def test_notification_never_carries_an_approve_action(tmp_path, domain, receiver):
    """The only link sent is the approval's console page (no one-click approve)."""
    rt = _runtime(tmp_path, domain, receiver)
    try:
        _request_approval(rt, domain)
        reqs = receiver.wait(2)
    finally:
        rt.close()
    for r in reqs:
        urls = [u for u in json.loads(r["body"]).values() if isinstance(u, str) and u.startswith("http")]
        assert all("/console/approvals/" in u and "decision" not in u for u in urls)


def test_failed_delivery_is_retried_then_audited(tmp_path, domain, receiver):
    """A receiver answering 500 gets every attempt, then `notify.failed` is audited per target."""
    receiver.status = 500
    rt = _runtime(tmp_path, domain, receiver, attempts=3)
    try:
        with capture_events() as events:
            approval_id = _request_approval(rt, domain)
            receiver.wait(6)
            deadline = time.monotonic() + 10
            while sum(e.type == ev.NOTIFY_FAILED for e in events) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
    finally:
        rt.close()
    failed = [e for e in events if e.type == ev.NOTIFY_FAILED]
    assert {e.payload["target"] for e in failed} == {"webhook", "slack"}
    assert all(e.payload["attempts"] == 3 and e.payload["approval_id"] == approval_id for e in failed)
    assert all(e.payload["error"] == "status 500" for e in failed)


def test_short_webhook_secret_is_refused_at_start(tmp_path, domain):
    """A webhook without a real secret is a config error naming the field."""
    from tether.errors import ConfigError

    extra = '\n[console.notify]\nwebhook_url = "https://hooks.example.com/x"\nwebhook_secret = "short"\n'
    with pytest.raises(ConfigError) as exc:
        make_settings(tmp_path / "state", domain=domain, config_extra=extra)
    assert exc.value.details["field"] == "console.notify.webhook_secret"
