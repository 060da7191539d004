"""busgate.program: the concurrency cap, backpressure (no unbounded local queue), services, plain
commands, JSON logs, and the drain on SIGTERM of the example program (a real subprocess)."""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys

import busgate
from busgate.program import Program

from conftest import EXAMPLES, TOKEN, python_env, wait_for


def args_for(url: str, command: str, **kw) -> argparse.Namespace:
    return argparse.Namespace(command=command, url=url, token=TOKEN, log_level="info", drain_timeout=10.0,
                              concurrency=None, argv=[], **kw)


async def test_consumer_never_runs_more_than_n_handlers(url):
    program = Program("captest")
    running = 0
    max_running = 0
    done = []

    @program.consumer("cap.jobs", queue="cappers", concurrency=3)
    async def work(msg, ctx):
        nonlocal running, max_running
        running += 1
        max_running = max(max_running, running)
        await asyncio.sleep(0.01)  # the work itself
        running -= 1
        done.append(msg.data)
        await ctx.publish("cap.done", msg.data)

    task = asyncio.ensure_future(program.run(args_for(url, "work")))
    await wait_for(lambda: "work" in program.running, what="the consumer to start")
    async with busgate.connect(url, token=TOKEN) as p:
        results = await p.subscribe("cap.done")
        for i in range(40):
            await p.publish("cap.jobs", str(i).encode())
        got = {(await results.next(10)).data for _ in range(40)}
    assert got == {str(i).encode() for i in range(40)}
    stats = program.running["work"].stats
    assert max_running == 3 and stats.max_in_flight == 3  # the cap was reached and never passed
    assert stats.taken == stats.done == 40 and stats.failed == 0
    program.stop()
    assert await asyncio.wait_for(task, 10) == 0


async def test_consumer_reads_no_more_work_than_it_can_run(url):
    program = Program("bptest")
    gate = asyncio.Event()
    started = []

    @program.consumer("bp.jobs", concurrency=2, prefetch=2)
    async def slow(msg):
        started.append(msg.data)
        await gate.wait()

    task = asyncio.ensure_future(program.run(args_for(url, "slow")))
    await wait_for(lambda: "slow" in program.running, what="the consumer to start")
    async with busgate.connect(url, token=TOKEN) as p:
        for i in range(300):
            await p.publish("bp.jobs", b"x" * 100)
        await p.flush()
        await wait_for(lambda: len(started) == 2, what="two handlers to start")
        stats = program.running["slow"].stats
        # two running, at most `prefetch` waiting locally; the other ~296 stay outside the process.
        # (A negative claim needs a window: nothing signals "did not read more".)
        await asyncio.sleep(0.2)
        assert stats.in_flight == 2 and stats.taken == 2 and len(started) == 2
        assert stats.max_pending <= 2
        gate.set()
        await wait_for(lambda: stats.done == 300, timeout=20, what="all 300 messages")
        assert stats.max_in_flight == 2 and stats.max_pending <= 2
    program.stop()
    assert await asyncio.wait_for(task, 10) == 0


async def test_service_answers_and_reports_handler_errors(url):
    program = Program("svctest")

    @program.service("calc.double", queue="calc", command="serve")
    async def double(msg):
        n = msg.json()["n"]
        if n < 0:
            raise ValueError("negative")
        return {"n": n * 2}

    @program.service("calc.text", command="serve")
    def text(msg, ctx):  # a plain function runs in a worker thread
        return "T:" + msg.data.decode()

    task = asyncio.ensure_future(program.run(args_for(url, "serve")))
    await wait_for(lambda: len(program.running) == 2, what="the services to start")
    async with busgate.connect(url, token=TOKEN) as c:
        r = await c.request("calc.double", b'{"n": 21}', timeout=5)
        assert r.json() == {"n": 42}
        r = await c.request("calc.double", b'{"n": -1}', timeout=5)
        assert r.data == b"" and r.headers["error"] == "ValueError: negative"
        assert (await c.request("calc.text", b"x", timeout=5)).data == b"T:x"
    program.stop()
    assert await asyncio.wait_for(task, 10) == 0


def run_forecast(*argv, **kw):
    return subprocess.Popen([sys.executable, "-m", "forecast", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**python_env(), **kw.pop("env", {})},
                            cwd=EXAMPLES, **kw)


def read_logs_until(proc, event: str, timeout: float = 15.0) -> list[dict]:
    """JSON log lines from the program's stderr up to and including `event` (a blocking read of a
    pipe is the readiness signal; the deadline guards against a hang)."""
    import threading
    logs: list[dict] = []
    found = threading.Event()

    def pump():
        for line in proc.stderr:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            logs.append(rec)
            if rec.get("event") == event:
                found.set()
                return
    t = threading.Thread(target=pump, daemon=True)
    t.start()
    assert found.wait(timeout), f"{event} not logged: {logs[-10:]}"
    return logs


async def test_example_drains_on_sigterm_without_losing_taken_work(url):
    proc = run_forecast("score", "--url", url, "--token", TOKEN, "--concurrency", "3",
                        env={"FORECAST_WORK_MS": "100"})
    try:
        loop = asyncio.get_running_loop()
        logs = await loop.run_in_executor(None, read_logs_until, proc, "program.ready")
        assert all({"ts", "level", "program", "command", "event"} <= set(r) for r in logs)
        async with busgate.connect(url, token=TOKEN) as c:
            results = await c.subscribe("forecasts.scored")
            n = 30
            for i in range(n):
                event = {"id": f"e{i}", "project": f"p{i % 3}", "open_issues": 40 + i, "opened_last_week": 12,
                         "closed_last_week": 7}
                await c.publish("exports.finished", json.dumps(event).encode())
            await c.flush()
            first = await results.next(10)  # work is under way
            proc.send_signal(signal.SIGTERM)  # ... while most events are still queued or running
            rest = await loop.run_in_executor(None, read_logs_until, proc, "program.stop", 30)
            code = await loop.run_in_executor(None, proc.wait, 10)
            assert code == 0
            stop = next(r for r in rest if r["event"] == "program.stop")["score"]
            assert stop["failed"] == 0 and stop["done"] == stop["taken"] and stop["max_in_flight"] <= 3
            got = [first] + [await results.next(5) for _ in range(stop["done"] - 1)]
            ids = {m.json()["id"] for m in got}
            assert len(ids) == stop["done"]  # every message taken was finished and its result published
            assert stop["taken"] == n  # everything delivered before the UNSUB was run, none dropped
            assert {"program.signal", "program.draining"} <= {r["event"] for r in rest}
            r0 = got[0].json()
            assert set(r0) >= {"id", "project", "forecast_open_next_week", "risk"}
            assert got[0].headers["model"] == "linear-v1"
    finally:
        proc.kill()


async def test_example_serve_and_train(url, tmp_path):
    proc = run_forecast("serve", "--url", url, "--token", TOKEN)
    try:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, read_logs_until, proc, "program.ready")
        async with busgate.connect(url, token=TOKEN) as c:
            r = await c.request("forecasts.query", b'{"project": "busgate"}', timeout=5)
            assert r.json() == {"project": "busgate", "error": "no forecast yet"}
            await c.publish("forecasts.scored", b'{"id": "e1", "project": "busgate", "risk": 0.5}')
            await c.flush()
            for _ in range(100):  # the serve command's own consumer remembers it
                r = await c.request("forecasts.query", b'{"project": "busgate"}', timeout=5)
                if "risk" in r.json():
                    break
                await asyncio.sleep(0.01)
            assert r.json()["risk"] == 0.5
            r = await c.request("forecasts.query", b'{"open_issues": 10, "opened_last_week": 5, '
                                                   b'"closed_last_week": 5}', timeout=5)
            assert r.json()["forecast_open_next_week"] == 9.75
        proc.send_signal(signal.SIGTERM)
        assert await loop.run_in_executor(None, proc.wait, 10) == 0
    finally:
        proc.kill()
    history = tmp_path / "h.jsonl"
    history.write_text("\n".join(json.dumps(r) for r in [
        {"open_issues": 10, "opened_last_week": 5, "closed_last_week": 3, "next_open": 12},
        {"open_issues": 20, "opened_last_week": 2, "closed_last_week": 6, "next_open": 16.5},
        {"open_issues": 5, "opened_last_week": 7, "closed_last_week": 1, "next_open": 11}]))
    p = run_forecast("train", str(history))
    out, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    assert set(json.loads(out)) == {"a", "b", "w0", "w1"}


async def test_drain_deadline_stops_taking_but_finishes_running_handlers(url):
    program = Program("deadline")
    gate = asyncio.Event()
    started = []

    @program.consumer("dl.jobs", concurrency=2, prefetch=2)
    async def stuck(msg, ctx):
        started.append(msg.data)
        await gate.wait()
        await ctx.publish("dl.done", msg.data)

    a = args_for(url, "stuck")
    a.drain_timeout = 0.3
    task = asyncio.ensure_future(program.run(a))
    await wait_for(lambda: "stuck" in program.running, what="the consumer to start")
    async with busgate.connect(url, token=TOKEN) as p:
        done = await p.subscribe("dl.done")
        for i in range(50):
            await p.publish("dl.jobs", str(i).encode())
        await wait_for(lambda: len(started) == 2, what="two handlers to start")
        stats = program.running["stuck"].stats
        program.stop()
        await wait_for(lambda: stats.dropped > 0, timeout=5, what="the drain deadline")
        assert not task.done()  # still waiting for the two running handlers
        gate.set()
        assert await asyncio.wait_for(task, 10) == 0
        assert stats.taken == stats.done == 2 and len(started) == 2
        assert sorted([(await done.next(5)).data for _ in range(2)]) == sorted(started)
