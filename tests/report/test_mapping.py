"""The control mapping: shipped identifiers, validation errors, and the status rules."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tether.errors import ConfigError
from tether.report.evidence import EVIDENCE, Evidence
from tether.report.mapping import MET, NOT_MET, OUT_OF_SCOPE, PARTLY, evaluate, load_mapping, parse_mapping


@pytest.fixture(scope="module")
def shipped() -> dict[str, Any]:
    from importlib import resources

    doc: dict[str, Any] = yaml.safe_load(
        resources.files("tether.report").joinpath("controls.yaml").read_text("utf-8")
    )
    return doc


def test_shipped_mapping_lists_every_control_with_exact_identifiers():
    """NHI1:2025…NHI10:2025, ASI01…ASI10, the seven MAESTRO layers, the RMF subcategories, tenets 3/4/6/7."""
    ids = [c.id for c in load_mapping().controls]
    assert ids[:10] == [f"NHI{i}:2025" for i in range(1, 11)]
    assert ids[10:20] == [f"ASI{i:02d}" for i in range(1, 11)]
    assert ids[20:27] == [f"MAESTRO L{i}" for i in range(1, 8)]
    assert {"GOVERN 1.6", "GOVERN 1.7", "MEASURE 2.4", "MANAGE 2.4"} <= set(ids)
    assert ids[-4:] == [f"SP 800-207 tenet {n}" for n in (3, 4, 6, 7)]


def test_out_of_scope_controls_are_listed_with_a_reason():
    """ASI06 (memory poisoning) is kept, out of scope, with why."""
    asi06 = load_mapping().control("asi06")
    assert asi06 is not None and asi06.out_of_scope and "memory" in asi06.out_of_scope


def test_maestro_is_described_as_layers_not_controls():
    """The MAESTRO framework entry says it has layers, not numbered controls."""
    fw = next(f for f in load_mapping().frameworks if f.id == "csa-maestro")
    assert "layers, not numbered controls" in fw.note


def _with(shipped: dict[str, Any], control_id: str, **change: Any) -> dict[str, Any]:
    doc = copy.deepcopy(shipped)
    c = next(c for c in doc["controls"] if c["id"] == control_id)
    c.update(change)
    return doc


def test_unknown_mechanism_is_refused_naming_file_and_control(shipped: dict[str, Any]):
    """A control citing a mechanism Tether does not have is a clear error."""
    doc = _with(shipped, "ASI03", mechanisms=["workload-identity", "magic-firewall"])
    with pytest.raises(ConfigError) as exc:
        parse_mapping(doc, "my-controls.yaml")
    assert exc.value.code == "mapping_invalid"
    assert "my-controls.yaml" in exc.value.message and "ASI03" in exc.value.message
    assert "magic-firewall" in exc.value.message


def test_unknown_evidence_query_is_refused(shipped: dict[str, Any]):
    """A control citing an evidence key no query computes is a clear error."""
    doc = _with(shipped, "NHI7:2025", evidence=["credentials.issued", "secrets.rotated_yearly"])
    with pytest.raises(ConfigError, match=r"secrets\.rotated_yearly"):
        parse_mapping(doc, "m.yaml")


def test_rule_reading_unshown_evidence_is_refused(shipped: dict[str, Any]):
    """A rule may only read evidence the control shows next to its status."""
    doc = _with(shipped, "NHI7:2025", met=["credentials.issued > 0", "audit.chain_ok == true"])
    with pytest.raises(ConfigError, match="does not list"):
        parse_mapping(doc, "m.yaml")


def test_malformed_condition_is_refused(shipped: dict[str, Any]):
    """A condition must read `KEY OP VALUE`."""
    doc = _with(shipped, "ASI10", met=["revocation.measured is plenty"])
    with pytest.raises(ConfigError, match="not a condition"):
        parse_mapping(doc, "m.yaml")


def test_out_of_scope_without_reason_is_refused(shipped: dict[str, Any]):
    """Nothing is put out of scope silently."""
    doc = _with(shipped, "ASI06", reason="")
    with pytest.raises(ConfigError, match="reason"):
        parse_mapping(doc, "m.yaml")


def test_a_mapping_file_on_disk_is_validated_with_its_path(tmp_path: Path, shipped: dict[str, Any]):
    """`--mapping FILE` goes through the same validation, and errors name FILE."""
    path = tmp_path / "controls.yaml"
    path.write_text(yaml.safe_dump(_with(shipped, "ASI02", mechanisms=["nope"])))
    with pytest.raises(ConfigError) as exc:
        load_mapping(path)
    assert str(path) in exc.value.message


def _evidence(**values: Any) -> Evidence:
    ev = Evidence()
    for key in EVIDENCE:
        ev.put(key, None)
    for key, v in values.items():
        key = key.replace("__", ".")
        n = v[1] if isinstance(v, tuple) else 0
        value = v[0] if isinstance(v, tuple) else v
        ev.put(key, value)
        object.__setattr__(ev.metrics[key], "n_events", n)
    return ev


def test_dpop_required_and_every_task_bound_is_met():
    """NHI4 is met with workload attestation, DPoP required and no unbound task."""
    c = load_mapping().control("NHI4:2025")
    assert c is not None
    ev = _evidence(
        agents__active=(2, 3),
        agents__attestation_methods=1,
        agents__static_secret=(0, 3),
        dpop__required=True,
        dpop__tasks_bound=(3, 3),
        dpop__tasks_unbound=(0, 0),
    )
    assert evaluate(c, ev).status == MET


def test_dpop_off_with_no_bound_task_is_not_met():
    """With DPoP not required and no task bound, NHI4 is not met."""
    c = load_mapping().control("NHI4:2025")
    assert c is not None
    ev = _evidence(
        agents__active=(2, 3),
        agents__static_secret=(0, 3),
        dpop__required=False,
        dpop__tasks_bound=(0, 0),
        dpop__tasks_unbound=(3, 3),
    )
    result = evaluate(c, ev)
    assert result.status == NOT_MET and any("dpop.tasks_bound" in w for w in result.why)


def test_met_is_never_claimed_without_audit_evidence_in_the_window():
    """All conditions true on counts with no events behind them: not met."""
    c = load_mapping().control("NHI4:2025")
    assert c is not None
    ev = _evidence(
        agents__active=2,
        agents__static_secret=0,
        dpop__required=True,
        dpop__tasks_bound=3,
        dpop__tasks_unbound=0,
    )
    result = evaluate(c, ev)
    assert result.status == NOT_MET and "no audit evidence" in result.why[0]


def test_condition_on_evidence_without_data_source_is_false():
    """`secrets.long_lived == 0` never holds while there is no secrets inventory: NHI7 stays partly met."""
    c = load_mapping().control("NHI7:2025")
    assert c is not None
    ev = _evidence(
        credentials__issued=(2, 2),
        credentials__ttl_p50=(60.0, 2),
        credentials__ttl_max=(60.0, 2),
        credentials__beyond_task=(0, 2),
        credentials__outlived_task=(0, 2),
    )
    result = evaluate(c, ev)
    assert result.status == PARTLY and any("secrets.long_lived" in w and "no data" in w for w in result.why)


def test_ceiling_caps_a_control_tether_only_partly_addresses():
    """ASI01 with every met condition true is still partly met, with the reason."""
    c = load_mapping().control("ASI01")
    assert c is not None
    ev = _evidence(
        tasks__opened=(1, 1), decisions__total=(1, 1), decisions__deny=(0, 0), decisions__out_of_scope=(0, 0)
    )
    ev.put("policy.taint_rule", 1)
    result = evaluate(c, ev)
    assert result.status == PARTLY and c.ceiling_reason in result.why[-1]


def test_out_of_scope_control_keeps_its_status_whatever_the_evidence():
    """An out-of-scope control is reported as such, with its reason."""
    c = load_mapping().control("ASI05")
    assert c is not None
    assert evaluate(c, _evidence()).status == OUT_OF_SCOPE
