"""Fixtures for NATS-bus tests: real nats-server processes (single or a 3-node cluster) on random
loopback ports, and real gateway processes connected to them."""
from __future__ import annotations

import json
import pathlib
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "integration"))
from rawgw import Gateway, RawClient, clients, start_gateway  # noqa: E402,F401


_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = pathlib.Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A loopback port for a server started later. It lies outside the kernel's ephemeral range, so
    no outgoing connection (a route, a gateway's NATS link) can take it as its source port before
    the server binds it, and this process never hands out the same port twice."""
    lo, _ = _ephemeral_range()
    low = 10000 if lo > 12000 else 1024
    for _ in range(1000):
        port = random.randrange(low, lo)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free loopback port below the ephemeral range")


class NatsServer:
    def __init__(self, port=None, cluster_port=None, routes=(), name=None, extra=()):
        self.port = port or free_port()
        self.mon = free_port()
        self.cluster_port = cluster_port
        self.routes = list(routes)
        self.name = name
        self.extra = list(extra)
        self.tmp = tempfile.TemporaryDirectory()
        self.proc = None
        self.start()

    @property
    def url(self):
        return f"nats://127.0.0.1:{self.port}"

    def start(self):
        args = ["nats-server", "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.mon)]
        if self.cluster_port:
            args += ["--cluster_name", "busgate-test", "--cluster", f"nats://127.0.0.1:{self.cluster_port}"]
            if self.routes:
                args += ["--routes", ",".join(self.routes)]
        if self.name:
            args += ["-n", self.name]
        args += self.extra
        self.log = open(pathlib.Path(self.tmp.name) / "nats.log", "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        self.stop()
        self.log.flush()
        tail = (pathlib.Path(self.tmp.name) / "nats.log").read_text()[-1500:]
        raise RuntimeError(f"nats-server did not start ({' '.join(args)}):\n{tail}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def monitor(self, path):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.mon}{path}", timeout=5) as r:
            return json.load(r)

    def subscriptions(self, conn_name_prefix="busgate-"):
        """Subjects subscribed by the gateway's NATS connections."""
        subs = []
        for c in self.monitor("/connz?subs=1")["connections"]:
            if (c.get("name") or "").startswith(conn_name_prefix):
                subs += c.get("subscriptions_list") or []
        return subs


@pytest.fixture
def nats():
    started = []

    def start(**kw):
        s = NatsServer(**kw)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def nats_cluster(nats):
    ports = [free_port() for _ in range(3)]
    routes = [f"nats://127.0.0.1:{p}" for p in ports]
    servers = [nats(cluster_port=ports[i], routes=[r for j, r in enumerate(routes) if j != i], name=f"n{i}")
               for i in range(3)]
    # wait until the routes are up (each server sees two routes)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if all(s.monitor("/routez")["num_routes"] >= 2 for s in servers):
            return servers
        time.sleep(0.05)
    raise RuntimeError("NATS cluster did not form")


def gateway_config(nats_urls, node_id, extra_tenants=""):
    servers = ", ".join(f'"{u}"' for u in nats_urls)
    return f"""
node_id: {node_id}
bus: {{kind: nats, servers: [{servers}]}}
timeouts: {{request_ms: 1000}}
tenants:
  - name: demo
    tokens: ["dev-token"]
    imports:
      - {{kind: service, from: "data.>", to: "svc.data.>"}}
  - name: other
    tokens: ["other-token"]
{extra_tenants}
"""
