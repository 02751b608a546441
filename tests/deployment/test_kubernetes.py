"""deploy/kubernetes/: valid against the Kubernetes API schemas, and coherent with Tether.

Schemas: the `kubernetes-validate` package (the API's OpenAPI definitions as JSON Schema,
"strict" variant: unknown fields are errors), checked with `jsonschema`. No cluster is
reachable here, so nothing is applied; what a cluster would add (admission, defaulting)
is not checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tether.catalog import load_catalog
from tether.policy.engine import PolicyEngine

from ._files import DEPLOY, EXAMPLES, TEST_MASTER_KEY, settings_from_env, unknown_tether_env

K8S = DEPLOY / "kubernetes"
#: The oldest Kubernetes release still commonly run, and the newest the package knows.
VERSIONS = ("1.30.0", "1.37.0")


def _docs() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


DOCS = _docs()


def _pod(docs: dict[str, dict[str, Any]] = DOCS) -> dict[str, Any]:
    spec: dict[str, Any] = docs["Deployment/tether"]["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", sorted(DOCS))
def test_manifest_is_valid_against_the_kubernetes_schema(name, version):
    """Each manifest validates (strict: no unknown field) against the API schema."""
    kubernetes_validate.validate(DOCS[name], version, strict=True)


def test_schema_check_refuses_a_misspelled_field():
    """The schema check can fail: a probe with a misspelled field is refused."""
    doc = yaml.safe_load((K8S / "deployment.yaml").read_text())
    doc["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, VERSIONS[-1], strict=True)


def test_the_expected_objects_are_shipped():
    """A Deployment, a Service, a PodDisruptionBudget, the Secret and both ConfigMaps."""
    assert set(DOCS) == {
        "Deployment/tether",
        "Service/tether",
        "PodDisruptionBudget/tether",
        "Secret/tether-secrets",
        "ConfigMap/tether-policies",
        "ConfigMap/tether-catalog",
    }
    kustom = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustom["resources"]) == sorted(
        p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"
    )


def test_probes_use_liveness_and_can_decide_endpoints():
    """Liveness and startup probe /healthz; readiness probes /readyz (the store answers)."""
    c = _pod()["containers"][0]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] in ports
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["TETHER_LISTEN"].endswith(f":{ports['http']}")


def test_pod_runs_unprivileged_on_a_read_only_root():
    """Non-root uid, no privilege escalation, every capability dropped, read-only root."""
    pod = _pod()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    sc = pod["containers"][0]["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]


def test_disruption_budget_selects_the_brokers_and_leaves_room():
    """The PDB selects the Deployment's pods and allows one of them to be drained."""
    dep = DOCS["Deployment/tether"]["spec"]
    pdb = DOCS["PodDisruptionBudget/tether"]["spec"]
    labels = dep["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert dep["selector"]["matchLabels"].items() <= labels.items()
    assert 1 <= pdb["minAvailable"] < dep["replicas"]
    assert DOCS["Service/tether"]["spec"]["selector"].items() <= labels.items()


def test_secret_and_configmaps_referenced_by_the_pod_exist():
    """Every secretKeyRef names a key of the Secret; every configMap volume is shipped."""
    pod = _pod()
    secret = DOCS["Secret/tether-secrets"]["stringData"]
    refs = [
        e["valueFrom"]["secretKeyRef"]
        for e in pod["containers"][0]["env"]
        if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]
    ]
    assert {r["name"] for r in refs} == {"tether-secrets"}
    assert {r["key"] for r in refs} == set(secret) == {"master-key", "store-url"}
    maps = {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v}
    assert {f"ConfigMap/{m}" for m in maps} <= set(DOCS)


def test_pod_environment_names_real_settings(tmp_path):
    """Every TETHER_* variable of the pod is a setting; with real values they validate."""
    env: dict[str, str] = {}
    for e in _pod()["containers"][0]["env"]:
        env[e["name"]] = e.get("value", "")
    assert unknown_tether_env(env) == []
    env.update(
        TETHER_NODE_ID="tether-7c9d8-abcde",  # the downward API's pod name
        TETHER_MASTER_KEY=TEST_MASTER_KEY,
        TETHER_STORE="postgresql://tether:x@db.internal:5432/tether",
    )
    s = settings_from_env(env, tmp_path)
    mounts = {m["mountPath"] for m in _pod()["containers"][0]["volumeMounts"]}
    assert str(s.policy_path) in mounts and str(s.catalog_path.parent) in mounts
    assert s.identity.workload_socket == ""
    assert "10.0.0.0/8" in s.metrics.allow  # the pod network may scrape /metrics


def test_configmaps_hold_the_shipped_examples():
    """The ConfigMaps carry exactly the example catalog and policies (kept in sync)."""
    policies = DOCS["ConfigMap/tether-policies"]["data"]
    assert policies == {p.name: p.read_text() for p in sorted((EXAMPLES / "policies").glob("*.cedar"))}
    assert DOCS["ConfigMap/tether-catalog"]["data"] == {
        "catalog.yaml": (EXAMPLES / "catalog.yaml").read_text()
    }


def test_configmap_policies_load_against_the_configmap_catalog(tmp_path):
    """Mounted as the pod mounts them, the policies validate in Cedar against the catalog."""
    pol = tmp_path / "policies"
    pol.mkdir()
    for name, text in DOCS["ConfigMap/tether-policies"]["data"].items():
        (pol / name).write_text(text)
    cat = tmp_path / "catalog.yaml"
    cat.write_text(DOCS["ConfigMap/tether-catalog"]["data"]["catalog.yaml"])
    engine = PolicyEngine()
    engine.set_catalog(load_catalog(cat))
    bundle = engine.reload(pol)
    assert sorted(Path(f).name for f in bundle.files) == sorted(DOCS["ConfigMap/tether-policies"]["data"])
