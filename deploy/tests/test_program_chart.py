"""The program chart (deploy/helm/busgate-program): a Deployment per long-running command, KEDA
ScaledObjects on durable consumers, CronJobs for schedules, the runners' probes and metrics."""
from __future__ import annotations

import subprocess

import pytest

from conftest import CHARTS, template, template_error

CHART = "busgate-program"
FORECAST = str(CHARTS / CHART / "examples" / "forecast.yaml")
NATS_KEDA = str(CHARTS / CHART / "examples" / "forecast-nats-keda.yaml")


@pytest.mark.parametrize("values", [[], ["-f", FORECAST], ["-f", NATS_KEDA]], ids=["defaults", "forecast", "nats-keda"])
def test_lint_strict(helm, values):
    r = subprocess.run([helm, "lint", "--strict", str(CHARTS / CHART), *values], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def container_of(obj):
    spec = obj["spec"]["jobTemplate"]["spec"]["template"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]["template"]["spec"]
    assert len(spec["containers"]) == 1
    return spec, spec["containers"][0]


def test_each_command_gets_the_object_its_kind_needs(helm):
    objs = template(helm, CHART, "-f", FORECAST, release="forecast")
    deployments = {d["metadata"]["labels"]["busgate.dev/command"]: d for d in objs.kind("Deployment")}
    assert set(deployments) == {"score-jobs", "score", "serve", "train-on-demand"}
    assert "replicas" not in deployments["score-jobs"]["spec"]  # KEDA owns it
    assert deployments["serve"]["spec"]["replicas"] == 2
    cron = objs.one("CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert cron["spec"]["schedule"] == "0 3 * * *" and cron["spec"]["timeZone"] == "Etc/UTC"
    pod, c = container_of(cron)
    # the history file comes from a volume; the rest of the filesystem is read-only
    assert {"name": "history", "mountPath": "/data", "readOnly": True} in c["volumeMounts"]
    assert any(v["name"] == "history" and v["persistentVolumeClaim"]["claimName"] == "forecast-history"
               for v in pod["volumes"])
    assert c["command"] == ["python"] and c["args"][:3] == ["-m", "forecast", "train"]
    assert c["args"][-1] == "/data/history.jsonl" and "--listen" not in c["args"]
    _, c = container_of(deployments["train-on-demand"])
    assert c["args"][:4] == ["-m", "forecast", "train", "--listen"]
    _, c = container_of(deployments["score-jobs"])
    assert c["args"][:3] == ["-m", "forecast", "score-jobs"] and c["args"][-2:] == ["--concurrency", "4"]
    # PDBs for what runs more than one replica or scales
    pdbs = {p["metadata"]["labels"]["busgate.dev/command"] for p in objs.kind("PodDisruptionBudget")}
    assert pdbs == {"score-jobs", "score", "serve"}


def test_every_runner_is_probed_scraped_and_given_the_token_from_a_secret(helm):
    objs = template(helm, CHART, "-f", FORECAST, release="forecast")
    svc = objs.one("Service", "forecast-metrics")
    sm = objs.one("ServiceMonitor")
    assert svc["metadata"]["labels"].items() >= sm["spec"]["selector"]["matchLabels"].items()
    for obj in objs.kind("Deployment") + objs.kind("CronJob"):
        pod, c = container_of(obj)
        env = {e["name"]: e for e in c["env"]}
        assert env["BUSGATE_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "forecast-gateway", "key": "token"}
        assert env["BUSGATE_URL"]["value"] == "busgate://busgate:7422"
        assert env["BUSGATE_PROGRAM_HTTP"]["value"] == "0.0.0.0:9464"
        assert c["securityContext"]["readOnlyRootFilesystem"] is True and pod["securityContext"]["runAsNonRoot"]
        if obj["kind"] == "Deployment":
            assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
            assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
            assert svc["spec"]["selector"].items() <= obj["spec"]["template"]["metadata"]["labels"].items()
            # the drain (--drain-timeout) fits in the grace period
            drain = int(c["args"][c["args"].index("--drain-timeout") + 1])
            assert pod["terminationGracePeriodSeconds"] > drain


def test_consumers_scale_on_the_gateways_backlog_metric(helm):
    so = template(helm, CHART, "-f", FORECAST, release="forecast").one("ScaledObject")
    assert so["spec"]["scaleTargetRef"]["name"] == "forecast-score-jobs"
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (0, 4)
    (t,) = so["spec"]["triggers"]
    assert t["type"] == "prometheus" and t["metadata"]["threshold"] == "8"
    q = t["metadata"]["query"]
    sel = 'namespace="busgate",tenant="forecasting",stream="jobs",consumer="forecasters"'
    assert q == f"max(busgate_consumer_pending{{{sel}}}) + max(busgate_consumer_ack_pending{{{sel}}})"
    # Prometheus not answering is not an empty backlog: the runners stay
    assert t["metadata"]["ignoreNullValues"] == "false"
    assert so["spec"]["fallback"]["replicas"] >= 1


def test_or_on_the_jetstream_consumer_the_gateway_names(helm):
    so = template(helm, CHART, "-f", NATS_KEDA).one("ScaledObject")
    (t,) = so["spec"]["triggers"]
    assert t["type"] == "nats-jetstream"
    # docs/configuration.md: stream <s> of tenant <t> is the JetStream stream busgate_<t>_<s>
    assert t["metadata"]["stream"] == "busgate_forecasting_jobs" and t["metadata"]["consumer"] == "forecasters"
    assert t["metadata"]["lagThreshold"] == "8"


def test_a_token_in_values_is_written_to_a_secret_of_the_chart(helm):
    objs = template(helm, CHART, "--set", "program.name=p", "--set", "program.module=p",
                    "--set", "commands.work.kind=consumer", "--set", "gateway.token=tok-123456789")
    secret = objs.one("Secret")
    _, c = container_of(objs.one("Deployment"))
    ref = {e["name"]: e for e in c["env"]}["BUSGATE_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["data"]


def test_long_names_never_collide(helm):
    long = "score-jobs-for-the-nightly-batch"
    objs = template(helm, CHART, "--set", "program.name=forecast-long-program-name-for-testing",
                    "--set", "gateway.token=t", "--set", f"commands.{long}-a.kind=consumer",
                    "--set", f"commands.{long}-b.kind=consumer", "--set", "commands.train.kind=scheduled",
                    "--set", "commands.train.schedule=@daily", release="my-release-name")
    names = [o["metadata"]["name"] for o in objs.kind("Deployment") + objs.kind("CronJob")]
    assert len(names) == 3 and len(set(names)) == 3, names
    assert all(len(n) <= 52 for n in names), names


@pytest.mark.parametrize("args, message", [
    (["--set", "gateway.existingSecret=s", "--set", "gateway.token=t"], "gateway.token would be ignored"),
    (["--set", "commands.x.kind=daemon", "--set", "gateway.token=t"], "commands.x.kind must be"),
    (["--set", "commands.x.kind=scheduled", "--set", "gateway.token=t"], "needs schedule"),
    (["--set", "commands.x.kind=service", "--set", "commands.x.autoscaling.enabled=true", "--set", "gateway.token=t"],
     "only consumer commands scale"),
    (["--set", "commands.x.kind=consumer", "--set", "commands.x.autoscaling.enabled=true", "--set", "gateway.token=t"],
     "autoscaling.tenant is required"),
    (["--set", "commands.x.kind=consumer"], "set gateway.existingSecret"),
    (["--set", "program.name=Forecast_1", "--set", "gateway.token=t"], "must be a DNS label"),
])
def test_values_a_careless_operator_writes_are_refused_with_the_reason(helm, args, message):
    assert message in template_error(helm, CHART, *args)
