"""Every object both charts render, over their default and example values: core objects pass
kubernetes-validate --strict (the Kubernetes API's own schemas), custom resources their documented
fields (crd_fields.py)."""
from __future__ import annotations

import subprocess
import sys

import jsonschema
import pytest
import yaml

from conftest import CHARTS, template
from crd_fields import KEDA_TRIGGERS, SCHEMAS

KUBERNETES_VERSION = "1.30.0"  # the oldest Kubernetes the charts support
RENDERS = {
    "busgate-defaults": ("busgate", []),
    "busgate-production": ("busgate", ["-f", str(CHARTS / "busgate/examples/production.yaml")]),
    "busgate-tls": ("busgate", ["--set", "tls.secretName=busgate-tls", "--set", "tls.clientCaKey=ca.crt"]),
    "program-forecast": ("busgate-program", ["-f", str(CHARTS / "busgate-program/examples/forecast.yaml")]),
    "program-forecast-nats-keda": ("busgate-program",
                                   ["-f", str(CHARTS / "busgate-program/examples/forecast-nats-keda.yaml")]),
}
CUSTOM = {"monitoring.coreos.com/v1", "keda.sh/v1alpha1"}


@pytest.mark.parametrize("render", RENDERS)
def test_core_objects_pass_kubernetes_validate_strict(helm, tmp_path, render):
    chart, args = RENDERS[render]
    objs = [o for o in template(helm, chart, *args) if o["apiVersion"] not in CUSTOM]
    assert objs
    files = []
    for i, o in enumerate(objs):
        f = tmp_path / f"{i:02d}-{o['kind']}-{o['metadata']['name']}.yaml"
        f.write_text(yaml.safe_dump(o))
        files.append(str(f))
    r = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", KUBERNETES_VERSION, *files],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count(" passed for resource ") == len(files), r.stdout


@pytest.mark.parametrize("render", RENDERS)
def test_custom_resources_use_only_their_documented_fields(helm, render):
    chart, args = RENDERS[render]
    for o in template(helm, chart, *args):
        if o["apiVersion"] not in CUSTOM:
            continue
        jsonschema.validate(o, SCHEMAS[o["kind"]])
        if o["kind"] == "ScaledObject":
            for t in o["spec"]["triggers"]:
                required, optional = KEDA_TRIGGERS[t["type"]]
                keys = set(t["metadata"])
                assert required <= keys, f"{t['type']} trigger lacks {required - keys}"
                assert keys <= required | optional, f"{t['type']} trigger has unknown {keys - required - optional}"


def test_the_schemas_catch_a_misspelt_field():
    so = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "x"},
          "spec": {"scaleTargetRef": {"name": "x"}, "maxReplicas": 3, "triggers": [{"type": "prometheus", "metadata": {}}]}}
    with pytest.raises(jsonschema.ValidationError, match="maxReplicas"):
        jsonschema.validate(so, SCHEMAS["ScaledObject"])
    rule = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule", "metadata": {"name": "x"},
            "spec": {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "up", "for": "1m", "severity": "x"}]}]}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(rule, SCHEMAS["PrometheusRule"])


def test_the_dashboard_is_what_its_generator_writes():
    gen = CHARTS / "busgate" / "dashboards" / "generate.py"
    r = subprocess.run([sys.executable, str(gen)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (CHARTS / "busgate" / "dashboards" / "busgate.json").read_text(), \
        "busgate.json differs from generate.py's output: regenerate it"
