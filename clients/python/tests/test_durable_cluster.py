"""Durable work across several gateway nodes on one JetStream server, with runner subprocesses:
the consumer's cap holds for the whole cluster, and a gateway node killed with SIGKILL under load
(runners and a publisher connected through it) loses no job."""
from __future__ import annotations

import asyncio
import time

import pytest

import busgate
from busgate import errors

from conftest import TOKEN, JetStreamServer, durable_config, gateway_nats_unsupported
from test_program_durable import Runner, read_lines, wait_file

STREAMS = """
      - {name: jobs, subjects: ["jobs.>"], retention: workqueue}"""
CONSUMERS = """
      - {name: scorers, stream: jobs, subject: jobs.score, max_inflight: 15, ack_wait_ms: 4000, max_deliveries: 50}"""
CONFIG = durable_config(STREAMS, CONSUMERS)


@pytest.fixture
def cluster(start_gateway, binary):
    """start(n) -> n gateway nodes on one nats-server with JetStream (file storage)."""
    reason = gateway_nats_unsupported(binary)
    if reason:
        pytest.skip(reason)
    servers = []

    def start(n: int):
        js = JetStreamServer()
        servers.append(js)
        return [start_gateway(CONFIG, nats=js.url) for _ in range(n)]

    yield start
    for s in servers:
        s.kill()


async def publish_jobs(urls: list[str], jobs: list[str]) -> set[str]:
    """Stored publishes with ack and a msg_id each, retried until stored (what a careful producer
    does): returns the jobs that got their OK."""
    done: set[str] = set()
    async with busgate.connect(urls, token=TOKEN) as c:
        for i in range(0, len(jobs), 50):
            batch = jobs[i:i + 50]
            while True:
                results = await asyncio.gather(
                    *(c.publish("jobs.score", j.encode(), ack=True, msg_id=f"job-{j}") for j in batch if j not in done),
                    return_exceptions=True)
                pending = [j for j in batch if j not in done]
                for j, r in zip(pending, results):
                    if not isinstance(r, BaseException):
                        done.add(j)
                if all(j in done for j in batch):
                    break
                await asyncio.sleep(0.2)  # the gateway went away: the client reconnects to the other node
    return done


def max_running(rows) -> int:
    running = peak = 0
    for kind, *_ in rows:  # file order is the order of the writes, across processes
        running += 1 if kind == "S" else -1
        peak = max(peak, running)
    return peak


async def test_the_cap_holds_across_three_gateway_nodes(cluster, tmp_path):
    gws = cluster(3)
    out = tmp_path / "cap.log"
    n = 180
    loop = asyncio.get_running_loop()
    # two runners per node, each asking for 10 slots: 60 asked, the platform's cap is 15
    runners = await asyncio.gather(*(
        loop.run_in_executor(None, Runner, tmp_path, gws[i % 3].url, out, "jobs.score", "scorers", 10, 120)
        for i in range(6)))
    try:
        await publish_jobs([gws[0].url], [str(i) for i in range(n)])
        await wait_file(lambda: sum(1 for r in read_lines(out) if r[0] == "E") >= n, timeout=60,
                        what=f"{n} jobs to complete")
        rows = read_lines(out)
        assert max_running(rows) == 15  # reached and never passed, over three nodes and six runners
        assert {r[1] for r in rows if r[0] == "E"} == {str(i) for i in range(n)}
        assert len({r[2] for r in rows}) > 1  # the work really was spread over several runners
    finally:
        for r in runners:
            r.kill()


async def test_killing_a_gateway_node_under_load_loses_no_job(cluster, tmp_path):
    gw1, gw2 = cluster(2)
    out = tmp_path / "jobs.log"
    loop = asyncio.get_running_loop()
    first = [str(i) for i in range(300)]
    stored = await publish_jobs([gw2.url], first)
    both = f"{gw1.url},{gw2.url}"
    runners = await asyncio.gather(
        loop.run_in_executor(None, Runner, tmp_path, both, out, "jobs.score", "scorers", 8, 30),
        loop.run_in_executor(None, Runner, tmp_path, f"{gw2.url},{gw1.url}", out, "jobs.score", "scorers", 8, 30))
    try:
        # more jobs arrive through the node that is about to die, while the runners work
        more = [str(i) for i in range(300, 600)]
        producer = asyncio.ensure_future(publish_jobs([gw1.url, gw2.url], more))
        await wait_file(lambda: sum(1 for r in read_lines(out) if r[0] == "E") >= 60, timeout=30,
                        what="the runners to be under way")
        gw1.kill()  # SIGKILL: no GOAWAY, no release; its deliveries come back after the ack wait
        t_kill = time.monotonic()
        stored |= await asyncio.wait_for(producer, 60)
        assert stored == set(first) | set(more)  # the producer got every OK, through gw2 if need be
        await wait_file(lambda: {r[1] for r in read_lines(out) if r[0] == "E"} >= stored, timeout=90,
                        what=f"all {len(stored)} stored jobs to complete")
        rows = read_lines(out)
        assert {r[1] for r in rows if r[0] == "E"} >= stored  # 0 lost
        assert time.monotonic() - t_kill < 90
        # and nothing is left on the consumer
        async with busgate.connect(gw2.url, token=TOKEN) as c:
            sub = await c.subscribe("jobs.score", durable="scorers")
            left = []
            try:
                while True:
                    m = await sub.next(5.0)  # longer than the ack wait: redeliveries would show
                    left.append(m.data.decode())
                    await m.ack()
            except errors.Timeout:
                pass
            assert not [j for j in left if j not in {r[1] for r in rows if r[0] == "E"}], left
    finally:
        for r in runners:
            r.kill()
