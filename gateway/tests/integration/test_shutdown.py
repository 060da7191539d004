"""SIGTERM while clients publish, subscribe, request and consume durably, on the memory bus and on a
real nats-server with JetStream: the gateway drains, stops its bus after its connections and
exits 0, every time. Under the sanitizer builds (scripts/sanitize) any report the teardown causes
fails the run as well."""
from __future__ import annotations

import pathlib
import signal
import sys
import tempfile
import threading
import time

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "nats"))
from natsfix import NatsServer  # noqa: E402
from rawgw import MSG, PING, PONG, PUB, REQ, RES, SUB, Closed, Gateway, RawClient, frame  # noqa: E402

ACK = 14
ROUNDS = 3


def config(bus: str) -> str:
    # Unacknowledged deliveries expire after 300 ms, so redeliveries are under way at the SIGTERM.
    return f"""
{bus}
timeouts: {{goaway_delay_ms: 200, drain_ms: 1500}}
tenants:
  - name: demo
    tokens: ["dev-token"]
    streams:
      - {{name: jobs, subjects: ["jobs.>"], retention: workqueue, storage: memory}}
    consumers:
      - {{name: workers, stream: jobs, subject: "jobs.>", max_inflight: 8, ack_wait_ms: 300}}
"""


class Traffic:
    """Client threads that keep the gateway busy until their connections end."""

    def __init__(self, g: Gateway):
        self.g = g
        self.stop = threading.Event()
        self.counts = {"msg": 0, "durable": 0, "res": 0}
        self.lock = threading.Lock()
        self.socks: list[RawClient] = []
        self.threads = [threading.Thread(target=f, daemon=True)
                        for f in (self.publisher, self.subscriber, self.durable, self.responder, self.requester)]
        # A subscriber that never reads: its connection may still be open when the drain ends.
        stuck = RawClient(g.tcp, rcvbuf=4096)
        stuck.hello()
        stuck.sub(1, "events.>")
        self.socks.append(stuck)
        self.responder_ready = threading.Event()
        for t in self.threads:
            t.start()

    def count(self, key):
        with self.lock:
            self.counts[key] += 1

    def client(self) -> RawClient:
        c = self.g.client()
        self.socks.append(c)
        return c

    def run(self, body):
        try:
            body()
        except (Closed, TimeoutError, OSError):
            pass  # the gateway closed the connection: the end of this client

    def publisher(self):
        def body():
            c = self.client()
            self.responder_ready.wait(5)
            n = 0
            while not self.stop.is_set():
                batch = b"".join(frame(PUB, f"events.{i % 4}", b"e%d" % i) for i in range(n, n + 20))
                batch += b"".join(frame(PUB, "jobs.work", b"j%d" % i) for i in range(n, n + 5))
                c.send_raw(batch)
                n += 20
                time.sleep(0.005)
        self.run(body)

    def subscriber(self):
        def body():
            c = self.client()
            c.sub(1, "events.>")
            while not self.stop.is_set():
                f = c.recv(timeout=10)
                if f[0] == MSG:
                    self.count("msg")
                elif f[0] == PING:
                    c.send(PONG)
        self.run(body)

    def durable(self):
        def body():
            c = self.client()
            c.send(SUB, 1, "jobs.>", None, {"durable": "workers"})
            seen = 0
            while not self.stop.is_set():
                f = c.recv(timeout=10)
                if f[0] == MSG:
                    self.count("durable")
                    seen += 1
                    if seen % 2:  # the others expire and come back
                        c.send(ACK, 1, f[6])
                elif f[0] == PING:
                    c.send(PONG)
        self.run(body)

    def responder(self):
        def body():
            c = self.client()
            c.sub(1, "svc.echo")
            self.responder_ready.set()
            while not self.stop.is_set():
                f = c.recv(timeout=10)
                if f[0] == MSG and len(f) > 5 and f[5]:
                    c.pub(f[5], f[3])
                elif f[0] == PING:
                    c.send(PONG)
        self.run(body)

    def requester(self):
        def body():
            c = self.client()
            self.responder_ready.wait(5)
            rid = 0
            while not self.stop.is_set():
                rid += 1
                c.send(REQ, rid, "svc.echo", b"q%d" % rid, None, 2000)
                if c.expect(RES, timeout=10)[1] == rid:
                    self.count("res")
        self.run(body)

    def wait_flowing(self, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if all(v >= 3 for v in self.counts.values()):
                    return
            time.sleep(0.05)
        raise AssertionError(f"traffic did not flow: {self.counts}\n" + "\n".join(self.g.log_lines[-20:]))

    def end(self):
        self.stop.set()
        for c in self.socks:
            c.close()
        for t in self.threads:
            t.join(15)


@pytest.fixture
def gateways():
    started: list[Gateway] = []
    yield started
    for g in started:
        g.stop()


@pytest.fixture
def bus_section(request):
    if request.param == "memory":
        yield "bus: {kind: memory}"
        return
    with tempfile.TemporaryDirectory() as store:
        server = NatsServer(extra=["-js", "-sd", store])
        try:
            yield f'bus: {{kind: nats, servers: ["{server.url}"]}}'
        finally:
            server.stop()


@pytest.mark.parametrize("bus_section", ["memory", "nats"], indirect=True)
def test_sigterm_under_load_exits_cleanly(bus_section, gateways):
    for _ in range(ROUNDS):
        g = Gateway(config(bus_section))
        gateways.append(g)
        traffic = Traffic(g)
        try:
            traffic.wait_flowing()
            g.signal(signal.SIGTERM)
            try:
                code = g.proc.wait(30)
            except Exception:
                raise AssertionError("the gateway did not exit within 30 s of SIGTERM:\n" +
                                     "\n".join(g.log_lines[-30:]))
        finally:
            traffic.end()
        tail = "\n".join(g.log_lines[-30:])
        assert code == 0, f"exit code {code}:\n{tail}"
        g.wait_log(r"busgate node \S+ stopped")
        assert not any("still held" in line for line in g.log_lines), tail
