"""busgate.program's --http endpoint and triggered commands, with programs run as real subprocesses
against the real gateway: /healthz, /readyz through connect, gateway loss and drain, /metrics
counting exactly the traffic sent, triggered commands (once per trigger, in order, one at a time,
replying to requests; durable triggers retried), and the forecast example's train --listen and
score-jobs."""
from __future__ import annotations

import asyncio
import http.client
import json
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

import busgate
from busgate import errors

from conftest import TOKEN, Process, durable_config, python_env

STREAMS = """
      - {name: jobs, subjects: ["jobs.>"], retention: workqueue}
      - {name: dead, subjects: ["deadletter.>"], retention: limits}"""
CONSUMERS = """
      - {name: retry, stream: jobs, subject: jobs.retry, max_inflight: 4, ack_wait_ms: 3000, max_deliveries: 3}
      - {name: trainers, stream: jobs, subject: jobs.train, max_inflight: 2, ack_wait_ms: 3000, max_deliveries: 3}
      - {name: forecasters, stream: jobs, subject: jobs.forecast, max_inflight: 15, ack_wait_ms: 3000,
         max_deliveries: 3}"""
CONFIG = durable_config(STREAMS, CONSUMERS)

PROGRAM = textwrap.dedent('''
    import asyncio, os, pathlib, time
    from busgate.program import Program

    program = Program("httptest")
    OUT = os.environ.get("OUT", "/dev/null")
    GATE = os.environ.get("GATE", "")

    def record(line):
        with open(OUT, "a") as f:
            f.write(line + "\\n")

    @program.consumer("h.jobs", concurrency=2)
    async def work(msg, ctx):
        if msg.data.startswith(b"bad"):
            raise ValueError("bad job")
        if msg.data == b"hold":  # runs until the test creates the GATE file
            while not pathlib.Path(GATE).exists():
                await asyncio.sleep(0.01)
            record("held")

    @program.consumer("jobs.retry", durable="retry", concurrency=2, command="retry")
    async def retried(msg, ctx):
        if msg.data.startswith(b"flaky") and msg.attempt == 1:
            raise RuntimeError("transient")

    @program.command(trigger="h.train")
    def train(ctx):
        """one run per trigger; a plain function (it runs in a worker thread)"""
        n = ctx.trigger.data.decode() if ctx.trigger is not None else None
        record(f"S {n}")
        time.sleep(0.05)
        record(f"E {n}")
        if n == "fail":
            raise ValueError("asked to fail")
        if n == "exit3":
            return 3
        print(f"trained trigger={n}", flush=True)
        return {"n": n} if ctx.trigger is not None else 0

    @program.command(trigger="jobs.train", durable="trainers")
    async def dtrain(ctx):
        m = ctx.trigger
        record(f"S {m.data.decode()} {m.attempt}")
        await asyncio.sleep(0.02)
        record(f"E {m.data.decode()} {m.attempt}")
        if m.data == b"flaky" and m.attempt == 1:
            raise RuntimeError("transient")

    @program.command()
    def plain(ctx):
        return 0

    @program.command()
    def slow(ctx):
        """blocks until the GATE file exists (a plain function: with --http it runs in a thread)"""
        while not pathlib.Path(GATE).exists():
            time.sleep(0.01)
        return 0

    if __name__ == "__main__":
        program.main()
''')


@pytest.fixture
def prog(tmp_path):
    """start(command, url, *options, env=...) -> the program's Process, started with --http on port 0;
    its .address is the HOST:PORT it logged as program.http."""
    path = tmp_path / "httpprog.py"
    path.write_text(PROGRAM)
    started: list[Process] = []

    def start(command: str, url: str, *options: str, env: dict | None = None) -> Process:
        p = Process([sys.executable, str(path), command, "--url", url, "--token", TOKEN, "--http", "127.0.0.1:0",
                     "--drain-timeout", "10", *options], '"program.http"', env={**python_env(), **(env or {})})
        started.append(p)
        p.address = re.search(r'"address": "([^"]+)"', "\n".join(p.log_lines)).group(1)  # type: ignore[attr-defined]
        return p

    start.path = path  # type: ignore[attr-defined]
    yield start
    for p in started:
        p.kill()


def get(address: str, path: str, method: str = "GET") -> tuple[int, str, str]:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, r.read().decode(), r.getheader("Content-Type") or ""
    finally:
        conn.close()


def scrape(address: str) -> list:
    status, body, _ = get(address, "/metrics")
    assert status == 200, body
    return [s for fam in text_string_to_metric_families(body) for s in fam.samples]


def value(samples: list, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    hits = [s.value for s in samples if s.name == name and labels.items() <= s.labels.items()]
    assert hits, f"no sample {name}{labels}"
    return sum(hits)


async def eventually(check, timeout: float = 10.0, what: str = "condition"):
    """Run the blocking ``check()`` in a thread every 20 ms until it returns a true value (bounded)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await asyncio.to_thread(check)
        if last:
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


async def test_health_ready_and_metrics_count_the_traffic(gateway, prog):
    p = prog("work", gateway.url)
    a = p.address
    assert (await asyncio.to_thread(get, a, "/healthz"))[:2] == (200, "ok")
    await eventually(lambda: get(a, "/readyz")[:2] == (200, "ready"), what="ready")
    n, bad = 20, 5
    async with busgate.connect(gateway.url, token=TOKEN) as c:
        for i in range(n):
            await c.publish("h.jobs", b"bad" if i % 4 == 0 else b"ok")
        await c.flush()
    labels = {"program": "httptest", "command": "work", "consumer": "work"}
    s = await eventually(lambda: (m := scrape(a)) and value(m, "busgate_program_done_total", **labels)
                         + value(m, "busgate_program_failed_total", **labels) == n and m, what="all runs")
    assert value(s, "busgate_program_taken_total", **labels) == n
    assert value(s, "busgate_program_done_total", **labels) == n - bad
    assert value(s, "busgate_program_failed_total", **labels) == bad
    assert value(s, "busgate_program_retried_total", **labels) == 0
    assert value(s, "busgate_program_inflight", **labels) == 0
    assert value(s, "busgate_program_handler_duration_seconds_count", **labels) == n
    assert value(s, "busgate_program_handler_duration_seconds_bucket", le="600.0", **labels) == n
    assert value(s, "busgate_program_ready", program="httptest", command="work") == 1
    assert value(s, "busgate_program_connected", program="httptest", command="work") == 1
    assert value(s, "busgate_program_info", program="httptest", command="work", version=busgate.__version__) == 1
    assert value(s, "process_resident_memory_bytes") > 0
    assert not [x for x in s if x.name.startswith("busgate_program_command_runs")]  # no plain command here
    status, _, ctype = await asyncio.to_thread(get, a, "/metrics")
    assert ctype.startswith("text/plain; version=0.0.4")
    assert (await asyncio.to_thread(get, a, "/nope"))[0] == 404
    assert (await asyncio.to_thread(get, a, "/healthz", "POST"))[0] == 405
    p.signal(signal.SIGTERM)
    assert await asyncio.to_thread(p.proc.wait, 15) == 0


async def test_readyz_follows_the_connection_and_the_runner_keeps_retrying(start_gateway, prog):
    gw = start_gateway()
    gw.signal(signal.SIGSTOP)  # accepts TCP (backlog) but answers nothing: the runner cannot connect yet
    p = prog("work", gw.url)
    a = p.address
    assert (await asyncio.to_thread(get, a, "/healthz"))[0] == 200  # alive while not ready
    status, body, _ = await asyncio.to_thread(get, a, "/readyz")
    assert (status, body) == (503, "connecting")
    s = await asyncio.to_thread(scrape, a)
    assert value(s, "busgate_program_ready") == 0 and value(s, "busgate_program_connected") == 0
    gw.signal(signal.SIGCONT)
    await eventually(lambda: get(a, "/readyz")[0] == 200, timeout=20, what="ready after the gateway answers")
    port = gw.port
    gw.kill()
    await eventually(lambda: get(a, "/readyz")[:2] == (503, "reconnecting"), what="not ready without a gateway")
    s = await asyncio.to_thread(scrape, a)
    assert value(s, "busgate_program_ready") == 0 and value(s, "busgate_program_connected") == 0
    assert (await asyncio.to_thread(get, a, "/healthz"))[0] == 200
    assert p.proc.poll() is None  # keeps retrying
    gw2 = start_gateway(tcp=f"127.0.0.1:{port}")  # the gateway comes back at the same address
    await eventually(lambda: get(a, "/readyz")[0] == 200, timeout=20, what="ready after the reconnect")
    async with busgate.connect(gw2.url, token=TOKEN) as c:
        await c.publish("h.jobs", b"ok")
        await c.flush()
    await eventually(lambda: value(scrape(a), "busgate_program_done_total") == 1, what="a job after the reconnect")


async def test_sigterm_drain_makes_readyz_503_before_exit(gateway, prog, tmp_path):
    gate, out = tmp_path / "gate", tmp_path / "out"
    p = prog("work", gateway.url, env={"GATE": str(gate), "OUT": str(out)})
    a = p.address
    await eventually(lambda: get(a, "/readyz")[0] == 200, what="ready")
    async with busgate.connect(gateway.url, token=TOKEN) as c:
        await c.publish("h.jobs", b"hold")
        await c.flush()
    await eventually(lambda: value(scrape(a), "busgate_program_inflight") == 1, what="the job to run")
    p.signal(signal.SIGTERM)
    await eventually(lambda: get(a, "/readyz")[:2] == (503, "draining"), what="/readyz 503 draining")
    assert (await asyncio.to_thread(get, a, "/healthz"))[0] == 200
    assert p.proc.poll() is None  # still finishing the running job
    gate.touch()
    assert await asyncio.to_thread(p.proc.wait, 15) == 0
    assert out.read_text() == "held\n"  # the running job was finished, not cut off
    stop = json.loads(next(line for line in p.log_lines if '"program.stop"' in line))
    assert stop["work"]["done"] == 1 and stop["work"]["taken"] == 1


async def test_durable_retries_are_counted(start_gateway, prog):
    gw = start_gateway(CONFIG)
    jobs = [b"ok-1", b"ok-2", b"flaky-3", b"ok-4", b"flaky-5", b"ok-6"]
    async with busgate.connect(gw.url, token=TOKEN) as c:
        for j in jobs:
            await c.publish("jobs.retry", j, ack=True)
    p = prog("retry", gw.url)
    labels = {"program": "httptest", "command": "retry", "consumer": "retried"}
    s = await eventually(lambda: (m := scrape(p.address)) and value(m, "busgate_program_done_total", **labels)
                         == len(jobs) and m, what="every job done")
    assert value(s, "busgate_program_failed_total", **labels) == 2
    assert value(s, "busgate_program_retried_total", **labels) == 2  # the two flaky jobs, attempt 2
    assert value(s, "busgate_program_taken_total", **labels) == len(jobs) + 2
    assert value(s, "busgate_program_handler_duration_seconds_count", **labels) == len(jobs) + 2
    p.signal(signal.SIGTERM)
    assert await asyncio.to_thread(p.proc.wait, 15) == 0


def runs_of(out) -> list[str]:
    return out.read_text().splitlines() if out.exists() else []


async def test_triggered_command_runs_once_per_trigger_in_order_and_replies(gateway, prog, tmp_path):
    out = tmp_path / "runs"
    p = prog("train", gateway.url, "--listen", env={"OUT": str(out)})
    a = p.address
    await eventually(lambda: get(a, "/readyz")[0] == 200, what="ready")
    async with busgate.connect(gateway.url, token=TOKEN) as c:
        for i in range(1, 6):  # arrive together: they wait their turn
            await c.publish("h.train", str(i).encode())
        r = await c.request("h.train", b"6", timeout=10)
        assert r.json() == {"ok": True, "result": {"n": "6"}}
        r = await c.request("h.train", b"fail", timeout=10)
        assert r.data == b"" and r.headers["error"] == "ValueError: asked to fail"
        r = await c.request("h.train", b"exit3", timeout=10)
        assert r.headers["error"] == "CommandFailed: exit code 3"
    names = [str(i) for i in range(1, 7)] + ["fail", "exit3"]
    # one at a time, in arrival order: S 1, E 1, S 2, E 2, ...
    assert runs_of(out) == [f"{k} {n}" for n in names for k in "SE"]
    s = await asyncio.to_thread(scrape, a)
    cmd = {"program": "httptest", "command": "train"}
    assert value(s, "busgate_program_command_runs_total", outcome="ok", **cmd) == 6
    assert value(s, "busgate_program_command_runs_total", outcome="failed", **cmd) == 2
    assert value(s, "busgate_program_taken_total", consumer="train", **cmd) == 8
    assert value(s, "busgate_program_handler_duration_seconds_count", consumer="train", **cmd) == 8
    p.signal(signal.SIGTERM)
    assert await asyncio.to_thread(p.proc.wait, 15) == 0


async def test_durable_trigger_acks_success_and_naks_failure(start_gateway, prog, tmp_path):
    gw = start_gateway(CONFIG)
    out = tmp_path / "runs"
    async with busgate.connect(gw.url, token=TOKEN) as c:
        for j in (b"a", b"flaky", b"b"):
            await c.publish("jobs.train", j, ack=True)
    p = prog("dtrain", gw.url, "--listen", env={"OUT": str(out)})
    await eventually(lambda: sum(1 for r in runs_of(out) if r.startswith("E")) == 4, what="four runs")
    rows = runs_of(out)
    assert all(rows[i][0] == "S" and rows[i + 1][0] == "E" for i in range(0, len(rows), 2))  # one at a time
    assert sorted(r for r in rows if r[0] == "E") == ["E a 1", "E b 1", "E flaky 1", "E flaky 2"]
    cmd = {"program": "httptest", "command": "dtrain"}
    s = await eventually(lambda: (m := scrape(p.address)) and value(
        m, "busgate_program_command_runs_total", outcome="ok", **cmd) == 3 and m, what="three good runs")
    assert value(s, "busgate_program_command_runs_total", outcome="failed", **cmd) == 1
    assert value(s, "busgate_program_retried_total", **cmd) == 1
    p.signal(signal.SIGTERM)
    assert await asyncio.to_thread(p.proc.wait, 15) == 0
    async with busgate.connect(gw.url, token=TOKEN) as c:  # every trigger was acknowledged
        sub = await c.subscribe("jobs.train", durable="trainers", max_inflight=4)
        with pytest.raises(errors.Timeout):
            await sub.next(0.5)


def run(path, *argv, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(path), *argv], capture_output=True, text=True, timeout=30,
                          env={**python_env(), **(env or {})})


def test_run_once_usage_errors_and_missing_prometheus_client(prog, tmp_path):
    path = prog.path
    r = run(path, "train", "--url", "busgate://127.0.0.1:1")  # run once: no connection, no trigger
    assert r.returncode == 0 and r.stdout == "trained trigger=None\n", r.stderr
    r = run(path, "plain", "--listen")
    assert r.returncode == 2 and "--listen: the command 'plain' has no trigger" in r.stderr
    r = run(path, "work", "--http", "localhost")
    assert r.returncode == 2 and "HOST:PORT" in r.stderr
    r = run(path, "plain", env={"BUSGATE_PROGRAM_HTTP": "nonsense"})  # the default comes from the environment
    assert r.returncode == 2 and "HOST:PORT" in r.stderr
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "prometheus_client.py").write_text("raise ImportError('not installed')\n")
    env = python_env()
    env["PYTHONPATH"] = f"{shadow}:{env['PYTHONPATH']}"
    r = run(path, "work", "--http", "127.0.0.1:0", "--url", "busgate://127.0.0.1:1", env=env)
    assert r.returncode == 2 and "pip install 'busgate[program]'" in r.stderr
    assert run(path, "plain", env=env).returncode == 0  # without --http the library is not needed


async def test_plain_command_serves_while_it_runs(prog, tmp_path):
    gate = tmp_path / "gate"
    p = prog("slow", "busgate://127.0.0.1:1", env={"GATE": str(gate)})
    a = p.address
    assert (await asyncio.to_thread(get, a, "/healthz"))[:2] == (200, "ok")  # the loop answers meanwhile
    assert (await asyncio.to_thread(get, a, "/readyz"))[:2] == (200, "ready")
    s = await asyncio.to_thread(scrape, a)
    runs = {"program": "httptest", "command": "slow"}
    assert value(s, "busgate_program_command_runs_total", outcome="ok", **runs) == 0
    assert value(s, "busgate_program_connected", **runs) == 0  # it has not connected
    gate.touch()
    assert await asyncio.to_thread(p.proc.wait, 15) == 0


def run_forecast(*argv: str, env: dict | None = None) -> Process:
    return Process([sys.executable, "-m", "forecast", *argv, "--token", TOKEN, "--http", "127.0.0.1:0"],
                   '"program.ready"', env={**python_env(), **(env or {})})


async def test_forecast_example_train_listen_and_score_jobs(start_gateway):
    gw = start_gateway(CONFIG)
    train = run_forecast("train", "--listen", "--url", gw.url)
    score = run_forecast("score-jobs", "--url", gw.url)
    try:
        history = [{"open_issues": 10, "opened_last_week": 5, "closed_last_week": 3, "next_open": 12},
                   {"open_issues": 20, "opened_last_week": 2, "closed_last_week": 6, "next_open": 16.5},
                   {"open_issues": 5, "opened_last_week": 7, "closed_last_week": 1, "next_open": 11}]
        async with busgate.connect(gw.url, token=TOKEN) as c:
            r = await c.request("models.train", json.dumps({"history": history}).encode(), timeout=10)
            body = r.json()
            assert body["ok"] is True and set(body["result"]) == {"a", "b", "w0", "w1"}
            r = await c.request("models.train", b"{}", timeout=10)
            assert r.headers["error"].startswith("ValueError")
            results = await c.subscribe("forecasts.scored")
            for i in range(3):
                event = {"id": f"j{i}", "project": "busgate", "open_issues": 40, "opened_last_week": 12,
                         "closed_last_week": 7}
                await c.publish("jobs.forecast", json.dumps(event).encode(), ack=True)
            got = sorted([(await results.next(10)).json()["id"] for _ in range(3)])
            assert got == ["j0", "j1", "j2"]
        a = re.search(r'"address": "([^"]+)"', "\n".join(score.log_lines)).group(1)
        await eventually(lambda: value(scrape(a), "busgate_program_done_total", program="forecast",
                                       command="score-jobs", consumer="score_job") == 3, what="three ACKed jobs")
        for proc in (train, score):
            proc.signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.proc.wait, 15) == 0
    finally:
        train.kill()
        score.kill()
