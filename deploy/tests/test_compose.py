"""deploy/compose.yaml without Docker: nats-server with JetStream, the two gateway services' command
lines, and the forecast program's services with their commands and environment, all started here.
The documented tokens work, the two nodes have distinct ids, replies cross nodes, and a durable job
published through one node is scored by runners spread over both."""
from __future__ import annotations

import asyncio
import hashlib
import json
import re
import sys

import pytest
import yaml

from conftest import ROOT
from procs import http_get, start_gateway, start_program, stop, wait_for

COMPOSE = ROOT / "deploy" / "compose.yaml"
EXAMPLE = ROOT / "deploy" / "gateway.example.yaml"


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(COMPOSE.read_text())


def documented_tokens() -> dict[str, str]:
    """The tokens the compose file's header lists: {tenant or 'admin API': token}."""
    out = {}
    for m in re.finditer(r"^#\s+(tenant \S+|admin API)\s+(\S+)", COMPOSE.read_text(), re.M):
        out[m.group(1)] = m.group(2)
    return out


def test_the_documented_tokens_are_the_ones_the_example_configuration_accepts(compose):
    tokens = documented_tokens()
    assert set(tokens) == {"tenant forecasting", "tenant data-service", "admin API"}
    cfg = yaml.safe_load(EXAMPLE.read_text())
    digests = {t["name"]: t["tokens_sha256"] for t in cfg["tenants"]}
    for who, tok in tokens.items():
        d = hashlib.sha256(tok.encode()).hexdigest()
        if who == "admin API":
            assert cfg["admin"]["token_sha256"] == d
        else:
            assert digests[who.split()[1]] == [d], who
    # the program services connect with the forecasting tenant's documented token
    for name, svc in compose["services"].items():
        if "BUSGATE_TOKEN" in svc.get("environment", {}):
            assert svc["environment"]["BUSGATE_TOKEN"] == tokens["tenant forecasting"], name


def test_the_whole_system_runs_as_compose_starts_it(compose, busgate_bin, tmp_path):
    sys.path.insert(0, str(ROOT / "gateway" / "tests" / "nats"))
    try:
        from natsfix import NatsServer
    finally:
        sys.path.pop(0)
    from busgate import connect

    services = compose["services"]
    nats_args = services["nats"]["command"]
    assert "-js" in nats_args
    nats = NatsServer(extra=["-js", "-sd", str(tmp_path / "js")])
    procs = []
    try:
        gateways = {}
        for name in ("gateway-1", "gateway-2"):
            cmd = list(services[name]["command"])
            cmd[cmd.index("--config") + 1] = str(EXAMPLE)  # what the volume mounts there
            cmd[cmd.index("--nats") + 1] = nats.url
            proc, tcp, http = start_gateway(busgate_bin, cmd, tmp_path / f"{name}.log")
            procs.append(proc)
            node = cmd[cmd.index("--node-id") + 1]
            gateways[name] = {"tcp": tcp, "http": http, "node": node}
        assert gateways["gateway-1"]["node"] != gateways["gateway-2"]["node"]
        urls = ",".join(f"busgate://{g['tcp']}" for g in gateways.values())

        runners = {}
        for name, svc in services.items():
            if "BUSGATE_TOKEN" not in svc.get("environment", {}):
                continue
            env = {k: str(v) for k, v in svc["environment"].items()}
            assert env["BUSGATE_URL"] == "busgate://gateway-1:7422,busgate://gateway-2:7422"
            env["BUSGATE_URL"] = urls
            proc, addr = start_program(["-m", "forecast", *svc["command"]], env, tmp_path / f"{name}.log")
            procs.append(proc)
            runners[name] = addr
        assert set(runners) >= {"score", "score-jobs", "serve", "train-on-demand"}
        for name, addr in runners.items():
            wait_for(lambda: http_get(f"http://{addr}/readyz")[0] == 200, 30, f"{name} ready")

        token = documented_tokens()["tenant forecasting"]
        history = [{"open_issues": 10 + i, "opened_last_week": 4, "closed_last_week": 2, "next_open": 12 + i}
                   for i in range(6)]

        async def use_it():
            a = await connect(f"busgate://{gateways['gateway-1']['tcp']}", token=token)
            b = await connect(f"busgate://{gateways['gateway-2']['tcp']}", token=token)
            assert {a.welcome.node_id, b.welcome.node_id} == \
                {g["node"] for g in gateways.values()}
            scored = await b.subscribe("forecasts.scored")
            await b.flush()
            for i in range(10):
                job = {"id": f"job-{i}", "project": "busgate", "open_issues": 40, "opened_last_week": 12,
                       "closed_last_week": 7}
                await a.publish("jobs.forecast", json.dumps(job).encode(), ack=True, msg_id=f"job-{i}")
            event = {"id": "ev-1", "project": "compose", "open_issues": 5, "opened_last_week": 1,
                     "closed_last_week": 1}
            await a.publish("exports.finished", json.dumps(event).encode())
            ids = set()
            while len(ids) < 11:
                ids.add(json.loads((await scored.next(timeout=30)).data)["id"])
            # serve remembers the scored forecasts; ask through the other node
            r = await a.request("forecasts.query", b'{"project": "compose"}', timeout=10)
            trained = await b.request("models.train", json.dumps({"history": history}).encode(), timeout=20)
            await a.close()
            await b.close()
            return ids, json.loads(r.data), json.loads(trained.data)

        ids, forecast, trained = asyncio.run(use_it())
        assert ids == {f"job-{i}" for i in range(10)} | {"ev-1"}
        assert forecast["project"] == "compose" and "forecast_open_next_week" in forecast
        assert trained["ok"] is True
        status, body = http_get(f"http://{gateways['gateway-1']['http']}/admin/connections",
                                documented_tokens()["admin API"])
        assert status == 200 and "forecast" in body
    finally:
        for p in reversed(procs):
            stop(p)
        nats.stop()
