"""SIGTERM while clients publish, subscribe, request and consume durably, on the memory bus and on a
real nats-server with JetStream: the gateway drains, stops its bus after its connections and
exits 0, every time, also when a connection is still open at the end of the drain (a WebSocket
peer that stopped reading, with a plain and a durable subscription). Under the sanitizer builds
(scripts/sanitize) any report the teardown causes fails the run as well."""
from __future__ import annotations

import base64
import os
import signal
import socket
import struct
import subprocess
import threading
import time

import msgpack
import pytest

from rawgw import HELLO, MSG, PING, PONG, PUB, REQ, RES, SUB, Closed, Gateway, RawClient, bus_config, frame  # noqa: E402

ACK = 14
# Per round: whether a WebSocket peer that stopped reading is connected at the SIGTERM.
ROUNDS = (False, True, False)


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


def stuck_websocket(http_addr) -> socket.socket:
    """A busgate.v1 WebSocket connection with a plain and a durable subscription that then reads
    nothing more and never answers the close handshake: it outlives the drain."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect(http_addr)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /v1/ws HTTP/1.1\r\nHost: {http_addr[0]}:{http_addr[1]}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
               "Sec-WebSocket-Protocol: busgate.v1\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        assert chunk, "the gateway closed the WebSocket upgrade"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head

    def send(*fields):  # one masked binary message
        body = msgpack.packb(list(fields), use_bin_type=True)
        mask = os.urandom(4)
        n = len(body)
        header = bytes([0x82]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n))
        s.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(body)))

    send(HELLO, [1], {"method": "token", "token": "dev-token"}, "stuck-ws")
    send(SUB, 1, "events.>")
    send(SUB, 2, "jobs.>", None, {"durable": "workers"})
    return s


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
    with bus_config(request.param) as section:
        yield section


@pytest.mark.parametrize("bus_section", ["memory", "nats"], indirect=True)
def test_sigterm_under_load_exits_cleanly(bus_section, gateways):
    for stuck in ROUNDS:
        g = Gateway(config(bus_section))
        gateways.append(g)
        traffic = Traffic(g)
        ws = stuck_websocket(g.http) if stuck else None
        try:
            traffic.wait_flowing()
            if ws:
                g.wait_log(r"connection open .*transport=ws", timeout=10)
            g.signal(signal.SIGTERM)
            try:
                code = g.proc.wait(30)
            except subprocess.TimeoutExpired:
                raise AssertionError("the gateway did not exit within 30 s of SIGTERM:\n" +
                                     "\n".join(g.log_lines[-30:]))
        finally:
            traffic.end()
            if ws:
                ws.close()
        tail = "\n".join(g.log_lines[-30:])
        assert code == 0, f"exit code {code}:\n{tail}"
        g.wait_log(r"busgate node \S+ stopped")
        if stuck:  # the drain gave up on it: the teardown ran with its session and subscriptions alive
            g.wait_log(r"drain: \d+ connections did not close; stopping", timeout=1)
        else:  # every session was closed and destroyed before the bus was stopped
            g.wait_log(r"drain: every connection closed", timeout=1)
            assert not any("still held" in line for line in g.log_lines), tail
