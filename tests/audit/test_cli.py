"""`tether audit …` commands, driven through click against the test store."""

from __future__ import annotations

import json

from click.testing import CliRunner

from tether.audit.checkpoint import read_checkpoint_file
from tether.audit.otel import _id
from tether.cli import main

from .helpers import build_tree, sql


def cli(rt, *args: str):
    return CliRunner().invoke(
        main, ["audit", *args, "--state-dir", str(rt.settings.state_dir), "--store", rt.settings.store_url]
    )


def test_verify_exits_zero_on_an_intact_log(runtime):
    """`verify --json` reports ok and exit code 0."""
    build_tree(runtime)
    res = cli(runtime, "verify", "--json")
    assert res.exit_code == 0 and json.loads(res.output)["ok"] is True


def test_verify_exits_one_and_names_the_seq_of_a_tampered_event(runtime):
    """After an edit, `verify --json` exits 1 with the edited seq."""
    build_tree(runtime)
    sql(runtime, "UPDATE audit_events SET payload = '{}' WHERE seq = 7")
    res = cli(runtime, "verify", "--json")
    assert res.exit_code == 1
    b = json.loads(res.output)["breaks"][0]
    assert (b["kind"], b["seq"]) == ("edited", 7)


def test_verify_human_output_names_the_seq(runtime):
    """The Rich output says where the chain broke."""
    build_tree(runtime)
    sql(runtime, "DELETE FROM audit_events WHERE seq = 3")
    res = cli(runtime, "verify")
    assert res.exit_code == 1 and "seq 3" in res.output and "missing" in res.output


def test_checkpoint_command_signs_heads_and_verify_uses_the_file(runtime, tmp_path):
    """`checkpoint --file` ships a signed head; `verify --checkpoints` then catches a truncation."""
    build_tree(runtime)
    path = tmp_path / "kept.jsonl"
    res = cli(runtime, "checkpoint", "--file", str(path), "--json")
    assert res.exit_code == 0, res.output
    cp = read_checkpoint_file(path)[0]
    sql(runtime, "DELETE FROM audit_events WHERE seq > 5")
    sql(runtime, "DELETE FROM audit_checkpoints")
    sql(
        runtime,
        "UPDATE audit_chains SET head_seq = 5, head_hash = (SELECT hash FROM audit_events WHERE seq = 5)",
    )
    res = cli(runtime, "verify", "--checkpoints", str(path), "--json")
    b = json.loads(res.output)["breaks"][0]
    assert res.exit_code == 1 and (b["kind"], b["seq"]) == ("rolled_back", 6) and cp.seq > 5


def test_malformed_checkpoint_file_is_an_error_with_a_code(runtime, tmp_path):
    """A checkpoint file that is not JSON Lines of checkpoints fails with `checkpoint_malformed`."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"chain": 1}\n')
    res = cli(runtime, "verify", "--checkpoints", str(bad), "--json")
    assert res.exit_code == 1 and json.loads(res.output)["error"]["code"] == "checkpoint_malformed"


def test_search_by_resource_and_decision(runtime):
    """`search --resource --decision` returns only matching decisions."""
    build_tree(runtime)
    res = cli(runtime, "search", "--resource", "billing.refund", "--decision", "allow", "--json")
    found = json.loads(res.output)
    assert res.exit_code == 0 and len(found) == 1
    assert (found[0]["payload"]["resource"], found[0]["payload"]["outcome"]) == ("billing.refund", "allow")


def test_search_by_agent_and_time_range(runtime):
    """`search --agent --since` filters on the agent column and time."""
    build_tree(runtime)
    agent = "spiffe://support.example/lookup"
    found = json.loads(cli(runtime, "search", "--agent", agent, "--since", "1h", "--json").output)
    assert found and {e["agent"] for e in found} == {agent}
    assert json.loads(cli(runtime, "search", "--agent", agent, "--until", "1h", "--json").output) == []


def test_search_rejects_a_bad_time_with_a_code(runtime):
    """An unparseable `--since` is an error with code `invalid_time`."""
    res = cli(runtime, "search", "--since", "yesterday-ish", "--json")
    assert res.exit_code == 1 and json.loads(res.output)["error"]["code"] == "invalid_time"


def test_tail_shows_the_last_events_of_a_type(runtime):
    """`tail -n 2 --type decision` returns the two latest decisions, oldest first."""
    build_tree(runtime)
    found = json.loads(cli(runtime, "tail", "-n", "2", "--type", "decision", "--json").output)
    assert [e["type"] for e in found] == ["decision", "decision"]
    assert found[0]["seq"] < found[1]["seq"]


def test_tail_follow_prints_events_committed_after_it_started(runtime):
    """`tail --follow` yields only events beyond the heads it saw first (bounded polls)."""
    from tether.audit.event import POLICY_LOADED
    from tether.audit.query import EventFilter, follow, high_water

    build_tree(runtime)
    with runtime.db.read() as conn:
        marks = high_water(conn)
    with runtime.audit.unit() as u:
        u.emit(POLICY_LOADED, {"version": "after"})
    polls = iter(range(3))
    got = list(
        follow(
            runtime.db,
            EventFilter(types=(POLICY_LOADED,)),
            after=marks,
            stop=lambda: next(polls, None) is None,
            sleep=lambda _s: None,
        )
    )
    assert [e.payload["version"] for e in got] == ["after"]


def test_tail_follow_cli_terminates_with_max_polls(runtime):
    """The CLI follow loop prints the backlog as JSON Lines and stops after the bounded polls."""
    build_tree(runtime)
    res = cli(runtime, "tail", "-n", "1", "--follow", "--json", "--poll", "0", "--max-polls", "1")
    assert res.exit_code == 0 and len(res.output.splitlines()) == 1


def test_trace_json_from_the_cli(runtime):
    """`trace --json` prints the tree rooted at the root task."""
    tree = build_tree(runtime)
    res = cli(runtime, "trace", tree.grandchild, "--json")
    assert res.exit_code == 0 and json.loads(res.output)["root_task_id"] == tree.root


def test_export_formats_write_files(runtime, tmp_path):
    """`export --format jsonl|ocsf|otel -o FILE` writes one JSON document per line."""
    tree = build_tree(runtime)
    for fmt in ("jsonl", "ocsf", "otel"):
        out = tmp_path / f"x.{fmt}"
        res = cli(runtime, "export", "--format", fmt, "-o", str(out), "--task", tree.child)
        assert res.exit_code == 0, res.output
        lines = [json.loads(x) for x in out.read_text().splitlines()]
        assert lines, fmt
    assert {x["context"]["trace_id"] for x in lines} == {f"0x{_id(tree.root, 128):032x}"}


def test_help_describes_every_command():
    """`tether audit --help` lists verify, trace, tail, search, export and checkpoint."""
    res = CliRunner().invoke(main, ["audit", "--help"])
    for cmd in ("verify", "trace", "tail", "search", "export", "checkpoint"):
        assert cmd in res.output
