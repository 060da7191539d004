"""Fixtures that start the real busgate binary and speak raw frames to it over sockets."""
from __future__ import annotations

import contextlib
import os
import pathlib
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import msgpack
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
BINARY = pathlib.Path(os.environ.get("BUSGATE_BIN", ROOT / "build" / "bin" / "busgate"))

# op codes and error codes (docs/protocol.md)
HELLO, WELCOME, PUB, SUB, UNSUB, MSG, REQ, RES, OK, ERR, PING, PONG, GOAWAY, ACK, NAK, CREDIT = range(1, 17)
E = {
    "MALFORMED_FRAME": 100, "UNKNOWN_OP": 101, "FRAME_TOO_LARGE": 102, "NOT_BUSGATE": 103,
    "HANDSHAKE_REQUIRED": 104, "UNSUPPORTED_VERSION": 105, "HANDSHAKE_TIMEOUT": 106, "UNEXPECTED_OP": 107,
    "AUTH_METHOD_UNSUPPORTED": 200, "AUTH_FAILED": 201, "AUTH_REVOKED": 202,
    "INVALID_SUBJECT": 300, "WILDCARD_NOT_ALLOWED": 301, "RESERVED_SUBJECT": 302, "RESERVED_HEADER": 303,
    "INVALID_HEADER": 304, "INVALID_QUEUE": 305, "PERMISSION_DENIED": 306, "SID_IN_USE": 307, "UNKNOWN_SID": 308,
    "PAYLOAD_TOO_LARGE": 400, "TOO_MANY_SUBSCRIPTIONS": 401, "RATE_LIMITED": 402, "TOO_MANY_REQUESTS": 403,
    "TOO_MANY_CONNECTIONS": 404, "SLOW_CONSUMER_WARNING": 405, "SLOW_CONSUMER": 406,
    "NO_RESPONDERS": 500, "REQUEST_TIMEOUT": 501, "BUS_UNAVAILABLE": 502, "DUPLICATE_REQUEST_ID": 503,
    "INTERNAL_ERROR": 600, "SHUTTING_DOWN": 601, "IDLE_TIMEOUT": 602, "CLOSED_BY_ADMIN": 603, "NOT_SUPPORTED": 604,
    "INVALID_OPTION": 309, "UNKNOWN_DELIVERY": 310, "UNKNOWN_STREAM": 311, "TOO_MANY_CONSUMERS": 407,
    "NOT_STORED": 504,
}


def frame(*fields) -> bytes:
    body = msgpack.packb(list(fields), use_bin_type=True)
    return struct.pack(">I", len(body)) + body


class Closed(Exception):
    pass


class RawClient:
    """A minimal busgate peer: raw frames over a socket, no client library."""

    def __init__(self, addr, timeout=5.0, rcvbuf=None):
        if rcvbuf:  # set before connecting so the TCP window is small from the start
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.settimeout(timeout)
            self.sock.connect(addr)
        else:
            self.sock = socket.create_connection(addr, timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.backlog = []
        self.welcome = None

    def send_raw(self, data: bytes):
        self.sock.sendall(data)

    def send(self, *fields):
        self.sock.sendall(frame(*fields))

    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no frame before the deadline")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout as e:
            raise TimeoutError("no frame before the deadline") from e
        except ConnectionResetError as e:
            raise Closed("connection reset") from e
        if not chunk:
            raise Closed("connection closed by the gateway")
        self.buf += chunk

    def recv(self, timeout=5.0):
        """The next frame off the socket (ignores the backlog)."""
        deadline = time.monotonic() + timeout
        while len(self.buf) < 4:
            self._fill(deadline)
        (n,) = struct.unpack(">I", self.buf[:4])
        while len(self.buf) < 4 + n:
            self._fill(deadline)
        body, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
        return msgpack.unpackb(body, raw=False)

    def expect(self, op, timeout=5.0):
        """The next frame with this op. Frames of other ops received meanwhile are kept, in order, for
        later expect() calls; PINGs are answered with PONG on the way."""
        for i, f in enumerate(self.backlog):
            if f[0] == op:
                return self.backlog.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            f = self.recv(max(0.0, deadline - time.monotonic()))
            if f[0] == PING and op != PING:
                self.send(PONG)
                continue
            if f[0] == op:
                return f
            self.backlog.append(f)

    def drain(self, op=None, quiet=0.3):
        """Every frame (of `op`, if given) that arrives until the connection is quiet for `quiet` s."""
        got = [f for f in self.backlog if op is None or f[0] == op]
        self.backlog = [f for f in self.backlog if not (op is None or f[0] == op)]
        while True:
            try:
                f = self.recv(quiet)
            except TimeoutError:
                return got
            if f[0] == PING:
                self.send(PONG)
            elif op is None or f[0] == op:
                got.append(f)
            else:
                self.backlog.append(f)

    def expect_err(self, name, timeout=5.0):
        f = self.expect(ERR, timeout)
        assert f[1] == E[name], f"expected {name}, got {f!r}"
        return f

    def expect_closed(self, timeout=5.0):
        deadline = time.monotonic() + timeout
        try:
            while True:
                self._fill(deadline)
        except Closed:
            return

    def hello(self, token="dev-token", name="test", opts=None):
        fields = [HELLO, [1], {"method": "token", "token": token}, name]
        if opts is not None:
            fields.append(opts)
        self.send(*fields)
        self.welcome = self.expect(WELCOME)
        return self.welcome

    def sub(self, sid, subject, queue=None):
        self.send(SUB, sid, subject, queue) if queue else self.send(SUB, sid, subject)
        f = self.recv()
        assert f[0] == OK and f[1:3] == [SUB, sid], f"SUB {subject} not confirmed: {f!r}"

    def pub(self, subject, payload=b"", headers=None, reply_to=None, ack=0):
        self.send(PUB, subject, payload, headers, reply_to, ack)

    def flush(self, timeout=5.0):
        """PING/PONG barrier: every frame sent before has been processed."""
        self.send(PING)
        return self.expect(PONG, timeout)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def burst_to_slow_reader(pub: RawClient, reader: RawClient, subject: str, n: int, payload: bytes):
    """Producer flow control, as a user sees it: `pub` sends n PUBs of `payload` on `subject` in one
    write (no pacing: as fast as the socket takes them) while `reader`, subscribed to it, reads about
    4 messages per 2 ms, slower than the burst. Returns the payload sizes the reader got and the ERR
    codes (or the exception) it met."""
    got, errors = [], []

    def read():
        try:
            while len(got) < n:
                f = reader.recv(timeout=10)
                if f[0] == MSG:
                    got.append(len(f[3]))
                    if len(got) % 4 == 0:
                        time.sleep(0.002)
                elif f[0] == ERR:
                    errors.append(f[1])
        except (Closed, TimeoutError) as e:
            errors.append(repr(e))

    t = threading.Thread(target=read)
    t.start()
    pub.send_raw(b"".join(frame(PUB, subject, payload) for _ in range(n)))
    pub.flush(timeout=30)
    t.join(60)
    return got, errors


class Gateway:
    def __init__(self, config: str | None = None, extra_args=(), env=None, preexec_fn=None):
        """`preexec_fn` runs in the child before the gateway starts (e.g. to set a resource limit)."""
        self.tmp = tempfile.TemporaryDirectory()
        self.config_path = None
        args = [str(BINARY), "--tcp", "127.0.0.1:0", "--http", "127.0.0.1:0", "--threads", "2"]
        if config is not None:
            self.config_path = pathlib.Path(self.tmp.name) / "gateway.yaml"
            self.config_path.write_text(config)
            args += ["--config", str(self.config_path)]
        args += list(extra_args)
        self.log_lines: list[str] = []
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})}, preexec_fn=preexec_fn)
        self._ready = threading.Event()
        self.tcp = self.http = None
        threading.Thread(target=self._pump, daemon=True).start()
        if not self._ready.wait(15):
            self.stop()
            raise RuntimeError("gateway did not start:\n" + "\n".join(self.log_lines))

    def _pump(self):
        for line in self.proc.stderr:
            self.log_lines.append(line.rstrip("\n"))
            m = re.search(r"(tcp|http) listening on (\S+):(\d+)", line)
            if m:
                addr = (m.group(2).strip("[]"), int(m.group(3)))
                if m.group(1) == "tcp":
                    self.tcp = addr
                else:
                    self.http = addr
            if "ready (bus:" in line:
                self._ready.set()

    def client(self, token="dev-token", **kw) -> RawClient:
        c = RawClient(self.tcp)
        c.hello(token, **kw)
        return c

    def raw(self) -> RawClient:
        return RawClient(self.tcp)

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait_log(self, pattern, timeout=5.0):
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            for line in list(self.log_lines):
                if rx.search(line):
                    return line
            time.sleep(0.02)
        raise AssertionError(f"log line /{pattern}/ not seen:\n" + "\n".join(self.log_lines[-30:]))

    def http_get(self, path):
        import http.client
        conn = http.client.HTTPConnection(*self.http, timeout=5)
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.tmp.cleanup()


def sha(token: str) -> str:
    import hashlib
    return hashlib.sha256(token.encode()).hexdigest()


@pytest.fixture
def start_gateway():
    started = []

    def start(config=None, **kw):
        g = Gateway(config, **kw)
        started.append(g)
        return g

    yield start
    for g in started:
        g.stop()


@pytest.fixture
def gw(start_gateway):
    """The gateway on its embedded default (memory bus, tenant demo, token dev-token)."""
    return start_gateway()


@pytest.fixture
def clients():
    made = []

    def track(c):
        made.append(c)
        return c

    yield track
    for c in made:
        c.close()


@contextlib.contextmanager
def bus_config(kind: str):
    """The `bus:` section of a gateway configuration: the memory bus, or ("nats") a real nats-server
    with JetStream on file storage in a temporary folder, stopped at the end."""
    if kind == "memory":
        yield "bus: {kind: memory}"
        return
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "nats"))
    from natsfix import NatsServer
    with tempfile.TemporaryDirectory() as store:
        server = NatsServer(extra=["-js", "-sd", store])
        try:
            yield f'bus: {{kind: nats, servers: ["{server.url}"]}}'
        finally:
            server.stop()
