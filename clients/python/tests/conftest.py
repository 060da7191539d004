"""Fixtures that run the REAL busgate binary (and a real nats-server) for the client tests.

The binary is BUSGATE_BIN (default <repo>/build/bin/busgate), copied once per test session so a
rebuild during the run cannot change it under the tests. Every process binds port 0 and the port is
read from its log; processes are killed in teardown.
"""
from __future__ import annotations

import asyncio
import hashlib
import http.client
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
PYDIR = ROOT / "clients" / "python"
EXAMPLES = PYDIR / "examples"
# Test the package in this tree, not whatever checkout an editable install elsewhere points to (the
# subprocesses get the same through PYTHONPATH, see below).
if str(PYDIR) not in sys.path:
    sys.path.insert(0, str(PYDIR))
_BIN_ENV = os.environ.get("BUSGATE_BIN")
SOURCE_BINARY = pathlib.Path(_BIN_ENV).resolve() if _BIN_ENV else ROOT / "build" / "bin" / "busgate"
NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
TOKEN = "dev-token"


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@pytest.fixture(scope="session")
def binary(tmp_path_factory) -> pathlib.Path:
    if not SOURCE_BINARY.exists():
        pytest.fail(f"the gateway binary {SOURCE_BINARY} does not exist: build it (cmake --build build) "
                    f"or set BUSGATE_BIN")
    dst = tmp_path_factory.mktemp("bin") / "busgate"
    shutil.copy2(SOURCE_BINARY, dst)
    return dst


class Process:
    """A child process whose stderr is pumped into log_lines; wait_log waits on the lines, not on time."""

    def __init__(self, args: list[str], ready: str, env: dict | None = None, timeout: float = 15.0,
                 fail_patterns: tuple[str, ...] = ()) -> None:
        self.args = args
        self.log_lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})})
        threading.Thread(target=self._pump, daemon=True).start()
        self.wait_log(re.escape(ready) if not ready.startswith("re:") else ready[3:], timeout,
                      fail_patterns=fail_patterns)

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.log_lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_log(self, pattern: str, timeout: float = 10.0, start: int = 0,
                 fail_patterns: tuple[str, ...] = ()) -> re.Match:
        rx = re.compile(pattern)
        fails = [re.compile(p) for p in fail_patterns]
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.log_lines[start:]:
                    m = rx.search(line)
                    if m:
                        return m
                    for f in fails:
                        if f.search(line):
                            raise RuntimeError(f"{self.args[0]}: {line}")
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._pumping()):
                    raise AssertionError(f"log /{pattern}/ not seen from {self.args[0]} (exit {self.proc.poll()}):\n"
                                         + "\n".join(self.log_lines[-40:]))
                self._cond.wait(min(left, 0.5))

    def _pumping(self) -> bool:
        return self.proc.stderr is not None and not self.proc.stderr.closed

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Gateway(Process):
    def __init__(self, binary: pathlib.Path, config: str | None = None, tcp: str = "127.0.0.1:0",
                 nats: str | None = None, extra: tuple[str, ...] = ()) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.config_path: pathlib.Path | None = None
        args = [str(binary), "--tcp", tcp, "--http", "127.0.0.1:0", "--threads", "2"]
        if config is not None:
            self.config_path = pathlib.Path(self.tmp.name) / "gateway.yaml"
            self.config_path.write_text(config)
            args += ["--config", str(self.config_path)]
        if nats:
            args += ["--nats", nats]
        args += list(extra)
        super().__init__(args, "ready (bus:", fail_patterns=("not available in this build", "failed to start"))
        self.tcp = self._addr("tcp")
        self.http = self._addr("http")

    def _addr(self, kind: str) -> tuple[str, int] | None:
        for line in self.log_lines:
            m = re.search(rf"{kind} listening on (\S+):(\d+)", line)
            if m:
                return m.group(1).strip("[]"), int(m.group(2))
        return None

    @property
    def port(self) -> int:
        assert self.tcp
        return self.tcp[1]

    @property
    def url(self) -> str:
        return f"busgate://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        assert self.http
        return f"ws://127.0.0.1:{self.http[1]}/v1/ws"

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        self.tmp.cleanup()


@pytest.fixture
def start_gateway(binary):
    started: list[Gateway] = []

    def start(config: str | None = None, **kw) -> Gateway:
        g = Gateway(binary, config, **kw)
        started.append(g)
        return g

    yield start
    for g in started:
        g.kill()
        g.tmp.cleanup()


@pytest.fixture
def gateway(start_gateway) -> Gateway:
    """A gateway on its embedded default: memory bus, tenant demo, token dev-token."""
    return start_gateway()


@pytest.fixture
def url(gateway) -> str:
    return gateway.url


class NatsServer(Process):
    def __init__(self) -> None:
        super().__init__([NATS_SERVER, "-a", "127.0.0.1", "-p", "-1", "-m", "0"],
                         "re:Server is ready")
        m = self.wait_log(r"Listening for client connections on (\S+):(\d+)")
        self.port = int(m.group(2))
        self.url = f"nats://127.0.0.1:{self.port}"


@pytest.fixture
def nats_server():
    if not os.path.exists(NATS_SERVER):
        pytest.skip("nats-server is not installed (Debian package nats-server)")
    n = NatsServer()
    yield n
    n.kill()


_probe_cache: dict[str, str | None] = {}


def gateway_nats_unsupported(binary: pathlib.Path) -> str | None:
    """None when the binary supports --nats, else the reason to skip."""
    if "nats" in _probe_cache:
        return _probe_cache["nats"]
    reason = None
    if not os.path.exists(NATS_SERVER):
        reason = "nats-server is not installed"
    else:
        n = NatsServer()
        try:
            g = Gateway(binary, nats=n.url)
            g.kill()
            g.tmp.cleanup()
        except RuntimeError as e:
            reason = f"this gateway build has no NATS bus: {e}"
        except AssertionError as e:
            reason = f"the gateway did not get ready with --nats: {str(e)[:300]}"
        finally:
            n.kill()
    _probe_cache["nats"] = reason
    return reason


def gateway_ws_unsupported(binary: pathlib.Path) -> str | None:
    """None when GET /v1/ws upgrades, else the reason to skip."""
    if "ws" in _probe_cache:
        return _probe_cache["ws"]
    g = Gateway(binary)
    try:
        assert g.http
        conn = http.client.HTTPConnection(*g.http, timeout=5)
        conn.request("GET", "/v1/ws", headers={
            "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Protocol": "busgate.v1"})
        r = conn.getresponse()
        reason = None if r.status == 101 else f"this gateway build has no WebSocket endpoint (/v1/ws answered {r.status})"
        conn.close()
    finally:
        g.kill()
        g.tmp.cleanup()
    _probe_cache["ws"] = reason
    return reason


@pytest.fixture
def require_nats(binary):
    reason = gateway_nats_unsupported(binary)
    if reason:
        pytest.skip(reason)


@pytest.fixture
def require_ws(binary):
    reason = gateway_ws_unsupported(binary)
    if reason:
        pytest.skip(reason)


def free_port() -> int:
    """Only for 'a port where nothing listens' (a refused connection); never to start a server on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_for(predicate, timeout: float = 5.0, what: str = "condition") -> None:
    """Wait until predicate() is true, checking on every event-loop turn (bounded)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def python_env() -> dict:
    """Environment for child Python processes: the package and the examples importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PYDIR), str(EXAMPLES), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


CLI = [sys.executable, "-m", "busgate.cli"]


# ------------------------------------------------------------------ durable consumption (section 16)

ADMIN_TOKEN = "test-admin-token"


def durable_config(streams: str, consumers: str, *, limits: str = "{max_consumers: 5}",
                   consumer_defaults: str = "{ack_wait_ms: 1000, max_deliveries: 3}", extra: str = "") -> str:
    """A gateway configuration (docs/configuration.md, "Streams and durable consumers") with tenant
    demo (token dev-token), the given streams and consumers (YAML flow lists), and an admin token."""
    return f"""
admin: {{token: {ADMIN_TOKEN}}}
{extra}
tenants:
  - name: demo
    tokens: [{TOKEN}]
    streams: {streams}
    consumers: {consumers}
    consumer_defaults: {consumer_defaults}
    limits: {limits}
"""


def admin(gw: "Gateway", method: str, path: str) -> tuple[int, object]:
    """Call the gateway's admin API (docs/operations.md); returns (status, parsed JSON or text)."""
    import json
    assert gw.http
    conn = http.client.HTTPConnection(*gw.http, timeout=5)
    try:
        conn.request(method, path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        r = conn.getresponse()
        body = r.read().decode()
        try:
            return r.status, json.loads(body)
        except ValueError:
            return r.status, body
    finally:
        conn.close()


def _items(v, key: str) -> list:
    return v if isinstance(v, list) else v.get(key, []) if isinstance(v, dict) else []


def connection_id(gw: "Gateway", session_id: str):
    status, body = admin(gw, "GET", "/admin/connections")
    assert status == 200, body
    for c in _items(body, "connections"):
        if c.get("session_id") == session_id:
            return c["id"]
    raise AssertionError(f"session {session_id} not in /admin/connections: {body}")


def close_connection(gw: "Gateway", session_id: str) -> None:
    """Close one client connection from the gateway's side (ERR CLOSED_BY_ADMIN; clients reconnect)."""
    status, body = admin(gw, "POST", f"/admin/connections/{connection_id(gw, session_id)}/close")
    assert status in (200, 204), body


def subscriptions_of(gw: "Gateway", session_id: str) -> list[dict]:
    status, body = admin(gw, "GET", "/admin/subscriptions")
    assert status == 200, body
    return [s for s in _items(body, "subscriptions") if s.get("session_id") == session_id]


class JetStreamServer(Process):
    """A nats-server with JetStream (file storage in a temporary directory)."""

    def __init__(self) -> None:
        self.store = tempfile.TemporaryDirectory()
        super().__init__([NATS_SERVER, "-a", "127.0.0.1", "-p", "-1", "-m", "0", "-js", "-sd", self.store.name],
                         "re:Server is ready")
        m = self.wait_log(r"Listening for client connections on (\S+):(\d+)")
        self.port = int(m.group(2))
        self.url = f"nats://127.0.0.1:{self.port}"

    def kill(self) -> None:
        super().kill()
        self.store.cleanup()


@pytest.fixture(params=["memory", "nats"])
def durable_gateway(request, start_gateway, binary):
    """start(config) -> a gateway with that configuration on the memory bus, then (second run of the
    test) on a NATS bus with JetStream (skipped when the binary or nats-server lacks it)."""
    servers: list[JetStreamServer] = []

    def start(config: str) -> Gateway:
        if request.param == "memory":
            return start_gateway(config)
        reason = gateway_nats_unsupported(binary)
        if reason:
            pytest.skip(reason)
        js = JetStreamServer()
        servers.append(js)
        return start_gateway(config, nats=js.url)

    start.bus = request.param  # type: ignore[attr-defined]
    yield start
    for s in servers:
        s.kill()
