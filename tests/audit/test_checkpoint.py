"""Checkpoint writer: cadence, shutdown, external file and URL, config validation."""

from __future__ import annotations

import http.server
import json
import threading
from dataclasses import replace

import pytest

from tether.audit.checkpoint import CheckpointWriter, read_checkpoint_file, stored_checkpoints
from tether.audit.event import POLICY_LOADED
from tether.config import AuditSettings, load_settings
from tether.errors import ConfigError
from tether.runtime import Runtime


def emit(rt: Runtime, n: int) -> None:
    for i in range(n):
        with rt.audit.unit() as u:
            u.emit(POLICY_LOADED, {"version": f"v{i}"})


def writer(rt: Runtime, **cfg: object) -> CheckpointWriter:
    return CheckpointWriter(
        rt.db, rt.audit, rt.keys, replace(rt.settings.audit, **cfg), rt.settings.state_dir
    )


def test_checkpoint_is_written_every_n_events(runtime):
    """With `checkpoint_every_events = 5`, a tick writes only once five new events exist."""
    w = writer(runtime, checkpoint_every_events=5, checkpoint_interval_seconds=3600)
    emit(runtime, 1)
    base = w.tick(force=True)
    emit(runtime, 4)
    assert w.tick() is None
    emit(runtime, 1)
    cp = w.tick()
    assert cp is not None and cp.seq == base.seq + 5 == runtime.audit.head[0]


def test_checkpoint_is_written_after_the_interval(runtime):
    """A tick writes once `checkpoint_interval_seconds` passed, even below the event count."""
    now = [1000.0]
    w = CheckpointWriter(
        runtime.db,
        runtime.audit,
        runtime.keys,
        replace(runtime.settings.audit, checkpoint_every_events=10_000, checkpoint_interval_seconds=60),
        runtime.settings.state_dir,
        clock=lambda: now[0],
    )
    emit(runtime, 1)
    assert w.tick() is None
    now[0] += 61
    assert w.tick() is not None


def test_no_checkpoint_when_the_head_did_not_move(runtime):
    """Forcing twice without new events writes one checkpoint."""
    w = writer(runtime)
    assert w.tick(force=True) is not None
    assert w.tick(force=True) is None


def test_shutdown_writes_a_final_checkpoint_of_the_head(settings):
    """`Runtime.close` checkpoints the head, so the last events are covered."""
    rt = Runtime.start(settings)
    emit(rt, 3)
    head = rt.audit.head
    rt.close()
    rt2 = Runtime.start(settings)
    try:
        with rt2.db.read() as conn:
            cps = stored_checkpoints(conn, rt2.audit.chain_id)
    finally:
        rt2.close()
    assert (cps[0].seq, cps[0].hash) == head


def test_checkpoints_are_appended_to_the_external_file(runtime, tmp_path):
    """`checkpoint_file` receives every checkpoint as one JSON line, readable back."""
    path = tmp_path / "ckpt.jsonl"
    w = writer(runtime, checkpoint_file=str(path))
    emit(runtime, 1)
    a = w.tick(force=True)
    emit(runtime, 1)
    b = w.tick(force=True)
    assert [c.seq for c in read_checkpoint_file(path)] == [a.seq, b.seq]


def test_checkpoints_are_posted_to_the_url(runtime):
    """`checkpoint_url` receives each checkpoint as a JSON POST."""
    got: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        w = writer(runtime, checkpoint_url=f"http://127.0.0.1:{srv.server_port}/ckpt")
        emit(runtime, 1)
        cp = w.tick(force=True)
    finally:
        srv.shutdown()
        srv.server_close()
    assert [(g["chain"], g["seq"], g["jws"]) for g in got] == [(cp.chain, cp.seq, cp.jws)]


def test_unreachable_checkpoint_url_does_not_stop_the_broker(runtime, caplog):
    """A dead archive endpoint is logged with its code; the checkpoint is still stored."""
    w = writer(runtime, checkpoint_url="http://127.0.0.1:9/none")
    emit(runtime, 1)
    assert w.tick(force=True) is not None
    assert "checkpoint_post_failed" in caplog.text


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"mask_patterns": ["("]}, "audit.mask_patterns[0]"),
        ({"mask_paths": ["a..b"]}, "audit.mask_paths[0]"),
        ({"mask_headers": "x-key"}, "audit.mask_headers"),
        ({"checkpoint_every_events": 0}, "audit.checkpoint_every_events"),
        ({"checkpoint_url": "ftp://x"}, "audit.checkpoint_url"),
    ],
)
def test_invalid_audit_settings_name_the_field(tmp_path, raw, field):
    """A bad `[audit]` setting refuses to load and names the field."""
    with pytest.raises(ConfigError) as exc:
        load_settings(tmp_path, environ={}, overrides={"audit": raw})
    assert exc.value.details["field"] == field


def test_mask_lists_come_from_the_environment_as_json(tmp_path):
    """`TETHER_AUDIT__MASK_PATTERNS` takes a JSON list."""
    s = load_settings(tmp_path, environ={"TETHER_AUDIT__MASK_PATTERNS": '["card-\\\\d+"]'})
    assert s.audit.mask_patterns == ("card-\\d+",) and isinstance(s.audit, AuditSettings)
