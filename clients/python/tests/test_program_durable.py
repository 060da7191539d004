"""busgate.program with durable consumers: at least once. In process: ACK after the handler returns,
NAK when it raises (the consumer's backoff, or the runner's own exponential one), TERM on Terminate,
PROGRESS while a long handler runs, and the drain that releases what it did not finish. As real
subprocesses: a runner killed with SIGKILL mid-job loses nothing, and several runners whose
concurrency is above the consumer's max_inflight never run more than that cap together.

The kill test runs BUSGATE_DURABLE_JOBS jobs (default 300: about 4 s). The figure from the issue,
10,000, takes about 25 s per bus on two cores: BUSGATE_DURABLE_JOBS=10000 python3 -m pytest -k kill ..."""
from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import busgate
from busgate import errors
from busgate.program import Program, Terminate

from conftest import TOKEN, durable_config, python_env, wait_for

STREAMS = """
      - {name: jobs, subjects: ["jobs.>"], retention: workqueue}
      - {name: dead, subjects: ["deadletter.>"], retention: limits}"""
CONSUMERS = """
      - {name: workers, stream: jobs, subject: jobs.work, max_inflight: 16, ack_wait_ms: 3000, max_deliveries: 20}
      - {name: capped, stream: jobs, subject: jobs.capped, max_inflight: 3, ack_wait_ms: 5000, max_deliveries: 5}
      - {name: retry, stream: jobs, subject: jobs.retry, max_inflight: 4, ack_wait_ms: 2000, max_deliveries: 3}
      - {name: slow, stream: jobs, subject: jobs.slow, max_inflight: 4, ack_wait_ms: 400, max_deliveries: 5}
      - {name: drain, stream: jobs, subject: jobs.drain, max_inflight: 8, ack_wait_ms: 10000, max_deliveries: 5}"""
CONFIG = durable_config(STREAMS, CONSUMERS)
JOBS = int(os.environ.get("BUSGATE_DURABLE_JOBS", "300"))


@pytest.fixture
def gw(durable_gateway):
    """The gateway with CONFIG, on the memory bus and on NATS (JetStream)."""
    return durable_gateway(CONFIG)


def args_for(url: str, command: str, drain_timeout: float = 10.0) -> argparse.Namespace:
    return argparse.Namespace(command=command, url=url, token=TOKEN, log_level="info", drain_timeout=drain_timeout,
                              concurrency=None, argv=[])


async def publish_all(url: str, subject: str, payloads: list[bytes]) -> None:
    """Stored publishes with ack and a msg_id each, 100 at a time."""
    async with busgate.connect(url, token=TOKEN) as c:
        for i in range(0, len(payloads), 100):
            await asyncio.gather(*(c.publish(subject, p, ack=True, msg_id=f"{subject}-{p.decode()}")
                                   for p in payloads[i:i + 100]))


async def test_handler_failures_are_retried_then_acked_and_terminate_dead_letters(gw):
    program = Program("retrytest")
    seen: list[tuple[bytes, int]] = []

    @program.consumer("jobs.retry", durable="retry", concurrency=2)
    async def work(msg, ctx):
        seen.append((msg.data, msg.attempt))
        if msg.data == b"poison":
            raise Terminate("bad payload")
        if msg.data == b"flaky" and msg.attempt == 1:
            raise RuntimeError("transient")
        await ctx.publish("results", msg.data)

    async with busgate.connect(gw.url, token=TOKEN) as c:
        results = await c.subscribe("results")
        dead = await c.subscribe("deadletter.retry")
        for p in (b"ok", b"flaky", b"poison"):
            await c.publish("jobs.retry", p, ack=True)
        task = asyncio.ensure_future(program.run(args_for(gw.url, "work")))
        got = sorted([(await results.next(5)).data for _ in range(2)])
        assert got == [b"flaky", b"ok"]
        d = await dead.next(5)
        assert d.data == b"poison" and d.headers["busgate-dead-reason"] == "terminated: bad payload"
        st = program.running["work"].stats
        await wait_for(lambda: st.acked == 2, what="two ACKs")
        assert (st.acked, st.nakked, st.terminated, st.stale, st.redelivered) == (2, 1, 1, 0, 1)
        assert sorted(seen) == [(b"flaky", 1), (b"flaky", 2), (b"ok", 1), (b"poison", 1)]
        program.stop()
        assert await asyncio.wait_for(task, 10) == 0


async def test_runner_exponential_retry_backoff(gw):
    program = Program("backofftest")
    times: list[float] = []

    @program.consumer("jobs.retry", durable="retry", retry_backoff=(0.2, 0.3))
    async def work(msg):
        times.append(time.monotonic())
        if msg.attempt < 3:
            raise RuntimeError("again")

    async with busgate.connect(gw.url, token=TOKEN) as c:
        await c.publish("jobs.retry", b"x", ack=True)
    task = asyncio.ensure_future(program.run(args_for(gw.url, "work")))
    await wait_for(lambda: "work" in program.running and program.running["work"].stats.acked == 1, timeout=10,
                   what="the third attempt to succeed")
    assert len(times) == 3
    assert times[1] - times[0] >= 0.18 and times[2] - times[1] >= 0.28  # 0.2 s, then 0.4 capped at 0.3
    program.stop()
    assert await asyncio.wait_for(task, 10) == 0


async def test_progress_keeps_a_long_handler_from_being_redelivered(gw):
    program = Program("progresstest")

    @program.consumer("jobs.slow", durable="slow", progress_interval=0.1)
    async def long_job(msg):
        await asyncio.sleep(1.3)  # three times the consumer's 400 ms ack wait

    async with busgate.connect(gw.url, token=TOKEN) as c:
        await c.publish("jobs.slow", b"long", ack=True)
        task = asyncio.ensure_future(program.run(args_for(gw.url, "long_job")))
        await wait_for(lambda: "long_job" in program.running and program.running["long_job"].stats.taken == 1,
                       what="the job to start")
        other = await c.subscribe("jobs.slow", durable="slow")  # a second replica would get a redelivery
        st = program.running["long_job"].stats
        await wait_for(lambda: st.acked == 1, timeout=5, what="the ACK")
        with pytest.raises(errors.Timeout):
            await other.next(0.6)
        assert (st.taken, st.redelivered, st.stale, st.nakked) == (1, 0, 0, 0)
        program.stop()
        assert await asyncio.wait_for(task, 10) == 0


async def test_drain_lets_running_handlers_finish_and_releases_what_it_cut_off(gw):
    program = Program("draintest")
    gate = asyncio.Event()
    started: list[bytes] = []

    @program.consumer("jobs.drain", durable="drain", concurrency=2)
    async def work(msg, ctx):
        started.append(msg.data)
        if msg.data == b"stuck":
            await asyncio.sleep(3600)  # never finishes by itself
        await gate.wait()
        await ctx.publish("drain.done", msg.data)

    async with busgate.connect(gw.url, token=TOKEN) as c:
        done = await c.subscribe("drain.done")
        for p in (b"quick", b"stuck", b"later-1", b"later-2"):
            await c.publish("jobs.drain", p, ack=True)
        task = asyncio.ensure_future(program.run(args_for(gw.url, "work", drain_timeout=0.8)))
        await wait_for(lambda: len(started) == 2, what="two handlers to start")
        assert started == [b"quick", b"stuck"]
        st = program.running["work"].stats
        program.stop()  # SIGTERM
        await asyncio.sleep(0.1)
        gate.set()  # "quick" finishes within the drain; "stuck" does not
        assert (await done.next(5)).data == b"quick"
        assert await asyncio.wait_for(task, 10) == 0
        assert (st.taken, st.acked, st.released) == (2, 1, 1) and started == [b"quick", b"stuck"]
        # nothing is lost: what was cut off and what was never taken are on the bus, for the next run
        sub = await c.subscribe("jobs.drain", durable="drain", max_inflight=3)
        rest = {}
        for _ in range(3):
            m = await sub.next(5)
            rest[m.data] = m.attempt
            await m.ack()
        assert rest == {b"stuck": 2, b"later-1": 1, b"later-2": 1}


PROGRAM = textwrap.dedent('''
    import asyncio, os
    from busgate.program import Program

    program = Program("jobsprog")
    OUT = os.environ["JOBS_OUT"]
    WORK = float(os.environ.get("JOBS_WORK_MS", "10")) / 1000
    HANG_AFTER = int(os.environ.get("JOBS_HANG_AFTER", "0"))  # then every job hangs: killed mid-job
    completed = 0

    def record(line):
        fd = os.open(OUT, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)  # one write(2) per line
        try:
            os.write(fd, (line + "\\n").encode())
        finally:
            os.close(fd)

    @program.consumer(os.environ["JOBS_SUBJECT"], durable=os.environ["JOBS_DURABLE"],
                      concurrency=int(os.environ["JOBS_CONCURRENCY"]))
    async def work(msg, ctx):
        global completed
        job = msg.data.decode()
        record(f"S {job} {os.getpid()} {msg.attempt}")
        if HANG_AFTER and completed >= HANG_AFTER:
            await asyncio.sleep(3600)
        await asyncio.sleep(WORK)
        record(f"E {job} {os.getpid()} {msg.attempt}")
        completed += 1

    if __name__ == "__main__":
        program.main()
''')


class Runner:
    """A runner subprocess of PROGRAM; ready once it logged program.ready."""

    def __init__(self, tmp: pathlib.Path, url: str, out: pathlib.Path, subject: str, durable: str,
                 concurrency: int, work_ms: int, hang_after: int = 0) -> None:
        prog = tmp / "jobsprog.py"
        if not prog.exists():
            prog.write_text(PROGRAM)
        env = {**python_env(), "JOBS_OUT": str(out), "JOBS_SUBJECT": subject, "JOBS_DURABLE": durable,
               "JOBS_CONCURRENCY": str(concurrency), "JOBS_WORK_MS": str(work_ms), "JOBS_HANG_AFTER": str(hang_after)}
        self.proc = subprocess.Popen([sys.executable, str(prog), "work", "--url", url, "--token", TOKEN,
                                      "--drain-timeout", "10"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.pid = self.proc.pid
        self.logs: list[str] = []
        for line in self.proc.stderr:  # a blocking read of the pipe is the readiness signal
            self.logs.append(line)
            if '"program.ready"' in line:
                break
        else:
            raise AssertionError("the runner exited before it was ready:\n" + "".join(self.logs))
        threading.Thread(target=lambda: self.logs.extend(self.proc.stderr), daemon=True).start()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


async def wait_file(predicate, timeout: float, what: str) -> None:
    """Poll a condition on the jobs file every 50 ms (bounded): the runners are separate processes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def read_lines(out: pathlib.Path) -> list[tuple[str, str, int, int]]:
    if not out.exists():
        return []
    rows = []
    text = out.read_text()
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines.pop()  # a line a runner is still writing
    for line in lines:
        kind, job, pid, attempt = line.split()
        rows.append((kind, job, int(pid), int(attempt)))
    return rows


async def test_a_runner_killed_mid_job_loses_nothing(gw, tmp_path):
    out = tmp_path / "jobs.log"
    jobs = [str(i).encode() for i in range(JOBS)]
    await publish_all(gw.url, "jobs.work", jobs)  # stored before any runner exists
    loop = asyncio.get_running_loop()
    # runner A finishes a few jobs, then its next eight (its concurrency) never end
    hang_after = min(20, JOBS // 4)
    a = await loop.run_in_executor(None, Runner, tmp_path, gw.url, out, "jobs.work", "workers", 8, 10, hang_after)
    b = None
    try:

        def in_hands() -> set[str]:
            rows = read_lines(out)
            return {r[1] for r in rows if r[0] == "S"} - {r[1] for r in rows if r[0] == "E"}

        await wait_file(lambda: len(in_hands()) == min(8, JOBS - hang_after), timeout=30,
                        what="runner A to be in the middle of its jobs")
        a.kill()  # kill -9 mid-job
        cut = in_hands()
        # a second runner finishes everything: what A held was released when its connection closed
        b = await loop.run_in_executor(None, Runner, tmp_path, gw.url, out, "jobs.work", "workers", 8, 10)
        want = {j.decode() for j in jobs}
        await wait_file(lambda: {r[1] for r in read_lines(out) if r[0] == "E"} >= want, timeout=30 + JOBS / 100,
                        what=f"all {JOBS} jobs to complete")
        rows = read_lines(out)
        assert {r[1] for r in rows if r[0] == "E"} == want  # 0 lost
        # the jobs A was running when it died were redone by B, as a later attempt
        assert cut <= {r[1] for r in rows if r[0] == "E" and r[2] == b.pid and r[3] >= 2}
        assert all(r[2] in (a.pid, b.pid) for r in rows)
        b.proc.send_signal(signal.SIGTERM)  # drain: finish, acknowledge, exit 0
        assert await loop.run_in_executor(None, b.proc.wait, 15) == 0
        # everything was acknowledged: nothing is left on the consumer
        async with busgate.connect(gw.url, token=TOKEN) as c:
            sub = await c.subscribe("jobs.work", durable="workers", max_inflight=16)
            left = []
            try:
                while True:
                    m = await sub.next(1.0)
                    left.append(m.data.decode())
                    await m.ack()
            except errors.Timeout:
                pass
            assert not left, f"{len(left)} jobs were still on the consumer: {left[:10]}"
    finally:
        a.kill()
        if b is not None:
            b.kill()


async def test_runners_together_never_exceed_the_consumers_cap(gw, tmp_path):
    out = tmp_path / "cap.log"
    cap, runners, concurrency, n = 3, 3, 5, 45
    loop = asyncio.get_running_loop()
    procs = await asyncio.gather(*(
        loop.run_in_executor(None, Runner, tmp_path, gw.url, out, "jobs.capped", "capped", concurrency, 60)
        for _ in range(runners)))
    try:
        await publish_all(gw.url, "jobs.capped", [str(i).encode() for i in range(n)])
        await wait_file(lambda: sum(1 for r in read_lines(out) if r[0] == "E") >= n, timeout=30,
                        what=f"{n} jobs to complete")
        running = max_running = 0
        for kind, *_ in read_lines(out):  # file order is the order of the writes, across processes
            running += 1 if kind == "S" else -1
            max_running = max(max_running, running)
        assert max_running == cap  # reached, never passed, though each runner could run 5
        assert {r[1] for r in read_lines(out) if r[0] == "E"} == {str(i) for i in range(n)}
    finally:
        for p in procs:
            p.kill()
