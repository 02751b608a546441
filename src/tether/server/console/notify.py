"""Tell people that an approval is waiting: a signed JSON webhook and/or a Slack-style message.

Each carries a link to the approval's console page, never a link that approves: deciding
needs a signed-in approver and a CSRF-checked form. Delivery runs on one background
thread (never on a decision's thread), with retries and exponential backoff; a delivery
that still fails after ``max_attempts`` is audited as ``notify.failed``.

Signature: ``X-Tether-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`` with
``X-Tether-Timestamp: <unix seconds>``, so receivers can refuse replays.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from tether.audit import event as ev
from tether.audit.event import Event
from tether.config_console import NotifySettings

if TYPE_CHECKING:
    from tether.runtime import Core
    from tether.server.console.web import Console

log = logging.getLogger("tether.console.notify")
MAX_QUEUE = 1000


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


def _slack_escape(text: str) -> str:
    # Slack's mrkdwn control characters: agent-supplied text must not become a link or mention.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def webhook_body(e: Event, url: str) -> dict[str, Any]:
    p = e.payload
    return {
        "type": "approval.pending",
        "approval_id": p.get("approval_id"),
        "task_id": e.task_id,
        "agent": e.agent,
        "delegator": e.delegator,
        "action": p.get("action"),
        "resource": p.get("resource"),
        "reason": p.get("reason"),
        "expires_at": p.get("expires_at"),
        "url": url,
    }


def slack_body(e: Event, url: str) -> dict[str, Any]:
    p = e.payload
    what = f"`{_slack_escape(str(p.get('action')))}` on `{_slack_escape(str(p.get('resource')))}`"
    who = _slack_escape(str(e.agent or "?"))
    why = _slack_escape(str(p.get("reason") or "approval required"))
    text = f"Approval needed: {who} wants {what}. {why}"
    return {
        "text": text,
        "blocks": [
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": f"*Approval needed*\n{who} wants {what}\n>{why}"},
            },
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": f"<{url}|Review it in the Tether console>"},
            },
            {
                "type": "context",
                "elements": [
                    {"type": "mrkdwn", "text": f"approval `{p.get('approval_id')}` · task `{e.task_id}`"}
                ],
            },
        ],
    }


class Notifier:
    def __init__(
        self,
        cfg: NotifySettings,
        console_url: str,
        *,
        on_failure: Callable[[str, str, int, str], None],
        client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.cfg, self.console_url, self.on_failure = cfg, console_url.rstrip("/"), on_failure
        self._client = client or httpx.Client(timeout=5.0, follow_redirects=False)
        self._sleep = sleep
        self._queue: queue.Queue[Event | None] = queue.Queue(MAX_QUEUE)
        self._thread = threading.Thread(target=self._run, name="tether-notifier", daemon=True)
        self.delivered = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def on_event(self, e: Event) -> None:
        if e.type != ev.APPROVAL_REQUESTED:
            return
        try:
            self._queue.put_nowait(e)
        except queue.Full:
            self.on_failure(str(e.payload.get("approval_id")), "queue", 0, "notification queue full")

    def targets(self, e: Event) -> list[tuple[str, str, bytes, Mapping[str, str]]]:
        url = f"{self.console_url}/approvals/{quote(str(e.payload.get('approval_id')), safe='')}"
        out: list[tuple[str, str, bytes, Mapping[str, str]]] = []
        if self.cfg.webhook_url:
            body = json.dumps(webhook_body(e, url), separators=(",", ":")).encode()
            ts = int(time.time())
            headers = {
                "Content-Type": "application/json",
                "X-Tether-Timestamp": str(ts),
                "X-Tether-Signature": sign(self.cfg.webhook_secret, ts, body),
            }
            out.append(("webhook", self.cfg.webhook_url, body, headers))
        if self.cfg.slack_url:
            body = json.dumps(slack_body(e, url)).encode()
            out.append(("slack", self.cfg.slack_url, body, {"Content-Type": "application/json"}))
        return out

    def deliver(self, e: Event) -> None:
        for kind, url, body, headers in self.targets(e):
            delay, error = self.cfg.backoff_seconds, ""
            for attempt in range(1, self.cfg.max_attempts + 1):
                try:
                    resp = self._client.post(url, content=body, headers=dict(headers))
                    if 200 <= resp.status_code < 300:
                        self.delivered += 1
                        break
                    error = f"status {resp.status_code}"
                except httpx.HTTPError as exc:
                    error = type(exc).__name__
                if attempt < self.cfg.max_attempts:
                    self._sleep(delay)
                    delay = min(delay * 2, 300.0)
            else:
                self.on_failure(str(e.payload.get("approval_id")), kind, self.cfg.max_attempts, error)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self.deliver(item)
            except Exception:  # a bug in one delivery must not stop the next
                log.exception("notification failed")


def install(rt: Core, console: Console) -> None:
    cfg = rt.settings.console.notify
    if not (cfg.webhook_url or cfg.slack_url):
        return

    def failed(approval_id: str, kind: str, attempts: int, error: str) -> None:
        log.warning("approval notification %s for %s failed: %s", kind, approval_id, error)
        try:
            with rt.audit.unit() as u:
                u.emit(
                    ev.NOTIFY_FAILED,
                    {"approval_id": approval_id, "target": kind, "attempts": attempts, "error": error},
                )
        except Exception:
            log.exception("could not audit a failed notification")

    notifier = Notifier(cfg, console.base_url + "/console", on_failure=failed)
    notifier.start()
    remove = rt.audit.add_listener(notifier.on_event)  # this runtime's chain only
    rt.on_close.append(notifier.stop)
    rt.on_close.append(remove)
