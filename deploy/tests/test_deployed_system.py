"""What the charts deploy, run on this machine: the gateway with deploy/gateway.example.yaml, and the
forecast program's commands with the command lines and environment the program chart renders. The
runners answer their probes, do the work, and every metric the Grafana dashboard, the alerts and the
KEDA trigger query is one the gateway or a runner exports."""
from __future__ import annotations

import asyncio
import json
import re

import pytest

from conftest import CHARTS, ROOT, template
from procs import http_get, start_gateway, start_program, stop, wait_for

TOKEN = "forecasting-dev-token"  # documented in deploy/gateway.example.yaml
ADMIN = "admin-dev-token"


def metric_names(exposition: str) -> set[str]:
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    return names


def sample_sum(exposition: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in exposition.splitlines():
        m = re.match(rf"{name}(?:\{{(.*)\}})? (\S+)$", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
    return total


@pytest.fixture(scope="module")
def gateway(busgate_bin, tmp_path_factory):
    d = tmp_path_factory.mktemp("gw")
    proc, tcp, http = start_gateway(busgate_bin, ["--config", str(ROOT / "deploy/gateway.example.yaml"),
                                                  "--node-id", "gw-compose-1"], d / "log")
    yield {"tcp": tcp, "http": http, "proc": proc}
    stop(proc)


def rendered_commands(helm) -> dict[str, dict]:
    objs = template(helm, "busgate-program", "-f", str(CHARTS / "busgate-program/examples/forecast.yaml"),
                    release="forecast")
    out = {}
    for o in objs.kind("Deployment") + objs.kind("CronJob"):
        spec = o["spec"]["jobTemplate"]["spec"]["template"]["spec"] if o["kind"] == "CronJob" else o["spec"]["template"]["spec"]
        out[o["metadata"]["labels"]["busgate.dev/command"]] = spec["containers"][0]
    return out


def start_runner(container: dict, gw: dict, tmp_path, name: str):
    """The container's command line, with python as this interpreter, the example on the path, and
    the environment the chart gives it (the gateway address, token and HTTP port made local)."""
    assert container["command"] == ["python"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert "BUSGATE_TOKEN" in {e["name"] for e in container["env"]}
    env.update(BUSGATE_URL=f"busgate://{gw['tcp']}", BUSGATE_TOKEN=TOKEN)
    proc, addr = start_program(container["args"], env, tmp_path / f"{name}.log")
    return proc, addr, None


def test_the_forecast_commands_run_as_the_chart_deploys_them(helm, gateway, tmp_path):
    from busgate import connect, errors

    cmds = rendered_commands(helm)
    runners = {}
    try:
        for name in ("score-jobs", "train-on-demand"):
            runners[name] = start_runner(cmds[name], gateway, tmp_path, name)
        for name, (proc, addr, log) in runners.items():
            assert http_get(f"http://{addr}/healthz") == (200, "ok")
            wait_for(lambda: http_get(f"http://{addr}/readyz")[0] == 200, 20, f"{name} ready")

        jobs = 20
        history = [{"open_issues": 10 + i, "opened_last_week": 4, "closed_last_week": 2, "next_open": 12 + i}
                   for i in range(8)]

        async def traffic():
            c = await connect(f"busgate://{gateway['tcp']}", token=TOKEN)
            scored = await c.subscribe("forecasts.scored")
            for i in range(jobs):
                event = {"id": f"j{i}", "project": "busgate", "open_issues": 40, "opened_last_week": 12,
                         "closed_last_week": 7}
                await c.publish("jobs.forecast", json.dumps(event).encode(), ack=True, msg_id=f"job-{i}")
            got = set()
            while len(got) < jobs:
                got.add(json.loads((await scored.next(timeout=20)).data)["id"])
            reply = await c.request("models.train", json.dumps({"history": history}).encode(), timeout=20)
            # what the dashboard's error and latency panels need: a refused publish, an unanswered request
            with pytest.raises(errors.BusgateError):
                await c.publish("internal.secret", b"x", ack=True)
            with pytest.raises(errors.BusgateError):
                await c.request("forecasts.query", b"{}", timeout=2)
            await c.close()
            return got, reply

        got, reply = asyncio.run(traffic())
        assert got == {f"j{i}" for i in range(jobs)}
        assert json.loads(reply.data)["ok"] is True

        _, score_metrics = http_get(f"http://{runners['score-jobs'][1]}/metrics")
        _, train_metrics = http_get(f"http://{runners['train-on-demand'][1]}/metrics")
        assert sample_sum(score_metrics, "busgate_program_done_total", command="score-jobs") == jobs
        assert sample_sum(train_metrics, "busgate_program_command_runs_total", command="train", outcome="ok") == 1
        status, gw_metrics = http_get(f"http://{gateway['http']}/metrics")
        assert status == 200
        assert sample_sum(gw_metrics, "busgate_consumer_pending", consumer="forecasters") == 0

        exported = metric_names(gw_metrics) | metric_names(score_metrics) | metric_names(train_metrics)
        check_queries_name_exported_metrics(helm, exported)
    finally:
        for proc, _, _ in runners.values():
            stop(proc)


def queried_metrics(expr: str) -> set[str]:
    names = set()
    for tok in re.findall(r"\b((?:busgate|process)_[a-zA-Z0-9_]+)", expr):
        names.add(tok)
    return names


def check_queries_name_exported_metrics(helm, exported: set[str]) -> None:
    def known(name: str) -> bool:
        return name in exported or any(name == base + suffix and base in exported
                                       for base in exported for suffix in ("_bucket", "_sum", "_count"))
    exprs = []
    dash = json.loads((CHARTS / "busgate/dashboards/busgate.json").read_text())
    for p in dash["panels"]:
        exprs += [("dashboard " + p["title"], t["expr"]) for t in p.get("targets", [])]
    exprs += [("dashboard variable " + v["name"], v["query"]["query"]) for v in dash["templating"]["list"]
              if isinstance(v.get("query"), dict)]
    objs = template(helm, "busgate", "-f", str(CHARTS / "busgate/examples/production.yaml"))
    for g in objs.one("PrometheusRule")["spec"]["groups"]:
        exprs += [("alert " + r["alert"], r["expr"]) for r in g["rules"]]
    so = template(helm, "busgate-program", "-f", str(CHARTS / "busgate-program/examples/forecast.yaml")).one("ScaledObject")
    exprs += [("KEDA trigger", t["metadata"]["query"]) for t in so["spec"]["triggers"]]
    assert len(exprs) > 30
    unknown = [(where, n) for where, e in exprs for n in queried_metrics(e) if not known(n)]
    assert not unknown, f"queries name metrics nothing exports: {unknown}"
