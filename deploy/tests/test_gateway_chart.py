"""The gateway chart (deploy/helm/busgate): lint, render, validate, and run what it renders."""
from __future__ import annotations

import base64
import json
import subprocess

import pytest
import yaml

from conftest import CHARTS, Rendered, template, template_error
from procs import http_get, start_gateway, stop

CHART = "busgate"
PRODUCTION = str(CHARTS / CHART / "examples" / "production.yaml")
VALUE_SETS = {"defaults": [], "production": ["-f", PRODUCTION]}


@pytest.mark.parametrize("values", VALUE_SETS, ids=list(VALUE_SETS))
def test_lint_strict(helm, values):
    r = subprocess.run([helm, "lint", "--strict", str(CHARTS / CHART), *VALUE_SETS[values]],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_defaults_render_one_gateway_on_the_memory_bus_with_a_generated_token(helm):
    objs = template(helm, CHART)
    dep = objs.one("Deployment")
    assert dep["spec"]["replicas"] == 1
    cfg = yaml.safe_load(objs.one("ConfigMap", "rel-busgate")["data"]["gateway.yaml"])
    assert cfg["bus"] == {"kind": "memory"}
    assert cfg["tenants"] == [{"name": "demo", "tokens": [{"file": "/etc/busgate/secrets/tenant-demo-tokens"}]}]
    assert "node_id" not in cfg  # the default, <hostname>-<pid>, is the pod's name
    data = objs.one("Secret")["data"]
    token = base64.b64decode(data["tenant-demo-tokens"]).decode()
    admin = base64.b64decode(data["admin-token"]).decode()
    assert len(token) >= 32 and len(admin) >= 32 and token != admin
    assert not objs.kind("PodDisruptionBudget")  # one replica: a budget would block node drains
    assert not objs.kind("HorizontalPodAutoscaler")


def test_production_values_render_the_monitoring_and_availability_objects(helm):
    objs = template(helm, CHART, "-f", PRODUCTION)
    assert not objs.kind("Secret")  # existingSecret
    cfg = yaml.safe_load(objs.one("ConfigMap", "rel-busgate")["data"]["gateway.yaml"])
    assert cfg["bus"]["kind"] == "nats" and len(cfg["bus"]["servers"]) == 3
    assert cfg["bus"]["password"] == {"file": "/etc/busgate/secrets/nats-password"}
    assert cfg["admin"] == {"token": {"file": "/etc/busgate/secrets/admin-token"}}
    pdb = objs.one("PodDisruptionBudget")["spec"]
    # one pod at a time, but pods that are not ready (NATS down) never block a node drain
    assert pdb["maxUnavailable"] == 1 and pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    hpa = objs.one("HorizontalPodAutoscaler")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 8)
    assert "replicas" not in objs.one("Deployment")["spec"]  # the HPA owns it
    sm = objs.one("ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    http = [s for s in objs.kind("Service") if s["metadata"]["labels"].get("app.kubernetes.io/part") == "http"]
    assert len(http) == 1 and all(http[0]["spec"]["selector"].items() <= sm["spec"]["selector"]["matchLabels"].items()
                                  for _ in [0])
    tcp = objs.one("Service", "rel-busgate")
    assert tcp["spec"]["type"] == "LoadBalancer" and tcp["spec"]["externalTrafficPolicy"] == "Local"
    alerts = {r["alert"] for r in objs.one("PrometheusRule")["spec"]["groups"][0]["rules"]}
    assert {"BusgateBusDisconnected", "BusgateConsumerAtCap", "BusgateDeadLetters"} <= alerts
    dash = objs.one("ConfigMap", "rel-busgate-dashboard")
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dash["data"]["busgate.json"])["uid"] == "busgate-overview"


def test_the_pod_is_locked_down_probed_and_outlives_its_drain(helm):
    objs = template(helm, CHART, "--set", "config.timeouts.drain_ms=45000", "--set", "preStopSeconds=7")
    pod = objs.one("Deployment")["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["readinessProbe"]["failureThreshold"] >= 2
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["/bin/sleep", "7"]
    # preStop + drain + margin: Kubernetes never kills a pod that is still draining
    assert pod["terminationGracePeriodSeconds"] > 7 + 45
    # the queue budget fits in the memory limit, so a full budget cannot get the pod killed
    cfg = yaml.safe_load(objs.one("ConfigMap", "rel-busgate")["data"]["gateway.yaml"])
    assert c["resources"]["limits"]["memory"] == "1Gi"
    assert cfg["limits"]["max_queued_bytes"] + 100 * 2**20 <= 2**30
    assert cfg["threads"] == 2


def test_plain_tokens_go_to_the_secret_never_to_the_configmap(helm):
    objs = template(helm, CHART, "--set", "tenants[0].name=acme", "--set", "tenants[0].tokens[0]=acme-secret-token-1",
                    "--set", "tenants[0].tokens[1]=acme-secret-token-2", "--set", "secrets.adminToken=admin-secret-x1",
                    "--set", "nats.servers[0]=nats://nats:4222", "--set", "nats.auth=token",
                    "--set", "nats.token=nats-secret-token")
    configmap = yaml.safe_dump(objs.one("ConfigMap", "rel-busgate"))
    for secret in ("acme-secret-token", "admin-secret-x1", "nats-secret-token"):
        assert secret not in configmap
    data = {k: base64.b64decode(v).decode() for k, v in objs.one("Secret")["data"].items()}
    assert data["tenant-acme-tokens"] == "acme-secret-token-1\nacme-secret-token-2"
    assert data["admin-token"] == "admin-secret-x1" and data["nats-token"] == "nats-secret-token"
    # a changed configuration rolls the pods (checksum annotation)
    other = template(helm, CHART, "--set", "config.log.level=debug")
    a = objs.one("Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    b = other.one("Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert a != b


@pytest.mark.parametrize("args, message", [
    (["--set", "replicaCount=3"], "more than one replica needs NATS"),
    (["--set", "nats.servers[0]=nats://n:4222", "--set", "replicaCount=2", "--set", "config.node_id=gw"],
     "config.node_id must be unique per node"),
    (["--set", "config.listen.tcp=0.0.0.0:1"], "config.listen is written by the chart"),
    (["--set", "nats.servers[0]=nats://n:4222", "--set", "nats.auth=kerberos"], "nats.auth must be"),
    (["--set", "tenants=null"], "tenants must list at least one tenant"),
    (["--set", "tenants[0].name=a", "--set", "tenants[0].tokens[0].env=A_TOKEN"], "must be a plain token string"),
    (["--set", "secrets.existingSecret=s", "--set", "tenants[0].name=a", "--set", "tenants[0].tokens[0]=aaaaaaaaaa"],
     "would be ignored with secrets.existingSecret"),
    (["--set", "config.timeouts.drain_ms=3000"], "goaway_delay_ms must not be above"),
    (["--set", "nats.servers[0]=nats://n:4222", "--set", "nats.auth=userPassword", "--set", "nats.user=u"],
     "needs nats.password"),
])
def test_values_that_would_break_the_cluster_are_refused_with_the_reason(helm, args, message):
    assert message in template_error(helm, CHART, *args)


def _write_secret_files(objs: Rendered, directory, extra: dict[str, str] | None = None) -> dict[str, str]:
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for s in objs.kind("Secret"):
        for k, v in s.get("data", {}).items():
            files[k] = base64.b64decode(v).decode()
    files.update(extra or {})
    for k, v in files.items():
        (directory / k).write_text(v + "\n")
    return files


@pytest.mark.parametrize("values", VALUE_SETS, ids=list(VALUE_SETS))
def test_the_rendered_configuration_passes_check_config(helm, busgate_bin, tmp_path, values):
    secrets = tmp_path / "secrets"
    objs = template(helm, CHART, *VALUE_SETS[values], "--set", f"secrets.mountPath={secrets}")
    extra = {}
    if values == "production":  # existingSecret: the keys docs/operations.md lists
        extra = {"admin-token": "prod-admin-token-1", "tenant-forecasting-tokens": "forecasting-token-1",
                 "tenant-data-service-tokens": "data-service-token-1", "nats-password": "nats-pass-1"}
    _write_secret_files(objs, secrets, extra)
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(objs.one("ConfigMap", "rel-busgate")["data"]["gateway.yaml"])
    r = subprocess.run([busgate_bin, "--check-config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "valid" in r.stdout


def test_the_default_install_serves_its_tenant_with_the_generated_token(helm, busgate_bin, tmp_path):
    """What `helm install` with no values runs: the rendered configuration and Secret, on the real
    gateway: the generated tenant token authenticates, the admin token opens the admin API."""
    import asyncio
    from busgate import connect, errors

    secrets = tmp_path / "secrets"
    objs = template(helm, CHART, "--set", f"secrets.mountPath={secrets}")
    files = _write_secret_files(objs, secrets)
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(objs.one("ConfigMap", "rel-busgate")["data"]["gateway.yaml"])
    proc, tcp, http = start_gateway(busgate_bin, ["--config", str(cfg)], tmp_path / "log")
    try:
        async def roundtrip():
            c = await connect(f"busgate://{tcp}", token=files["tenant-demo-tokens"])
            sub = await c.subscribe("hello")
            await c.publish("hello", b"from the chart")
            msg = await asyncio.wait_for(sub.next(), 5)
            await c.close()
            with pytest.raises(errors.BusgateError) as e:
                await connect(f"busgate://{tcp}", token="not-the-token", max_reconnect_attempts=0)
            return msg.data, e.value.name

        data, refused = asyncio.run(roundtrip())
        assert data == b"from the chart" and refused == "AUTH_FAILED"
        assert http_get(f"http://{http}/readyz")[0] == 200
        assert http_get(f"http://{http}/admin/tenants")[0] == 401
        status, body = http_get(f"http://{http}/admin/tenants", files["admin-token"])
        assert status == 200 and "demo" in body
    finally:
        stop(proc)
