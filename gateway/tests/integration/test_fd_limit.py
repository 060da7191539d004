"""The gateway at its file-descriptor limit (docs/operations.md, "File descriptors").

The real binary runs with a small RLIMIT_NOFILE. Connections are opened on one listener until the
gateway can no longer accept them (they sit in the kernel's backlog, unanswered). While it stays
at the limit, the gateway must not spin (little CPU, a few log lines), must keep serving the
connections it has, and must accept again soon after descriptors are freed.
"""
from __future__ import annotations

import os
import re
import resource
import socket
import ssl
import subprocess
import time

import pytest

import rawgw
from rawgw import HELLO, WELCOME, Closed, RawClient

ACCEPT_LINE = re.compile(r"\baccept (paused|failed|resumed)\b")
HELD_MAX = 300  # bound on the connections a test opens while looking for the limit


class LimitedGateway(rawgw.Gateway):
    """rawgw.Gateway started with RLIMIT_NOFILE = (soft, hard)."""

    def __init__(self, soft: int, hard: int, extra_args=()):
        super().__init__(extra_args=extra_args,
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))

    def listening(self, what) -> tuple[str, int]:
        line = self.wait_log(rf"\b{what} listening on ")
        host, port = line.rsplit(" ", 1)[1].rsplit(":", 1)
        return host.strip("[]"), int(port)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the whole process so far (/proc/PID/stat)."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def accept_lines(self) -> list[str]:
        return [line for line in list(self.log_lines) if ACCEPT_LINE.search(line)]


@pytest.fixture
def limited():
    started, conns = [], []

    def start(soft, hard, extra_args=()):
        g = LimitedGateway(soft, hard, extra_args)
        started.append(g)
        return g

    start.conns = conns  # every socket a test opened: closed before the gateway stops (a short drain)
    yield start
    for c in conns:
        try:
            c.close()
        except OSError:
            pass
    for g in started:
        g.stop()


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("fdcert")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-out",
                    "cert.pem", "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
                   cwd=d, check=True, capture_output=True)
    return d


def tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the test is about descriptors, not trust
    return ctx


# ---- one connection per listener kind: open it and tell whether the gateway served it in time ----

def served_busgate(addr, timeout, tls=False):
    """A busgate connection that has sent HELLO; served when WELCOME came within `timeout`."""
    raw = socket.create_connection(addr, timeout=5)
    c = RawClient.__new__(RawClient)
    c.buf, c.backlog, c.welcome = b"", [], None
    c.sock = raw
    try:
        if tls:
            raw.settimeout(timeout)
            c.sock = tls_context().wrap_socket(raw, server_hostname="127.0.0.1")
        c.send(HELLO, [1], {"method": "token", "token": "dev-token"}, "fd-limit")
        c.welcome = c.expect(WELCOME, timeout)
        return c, True
    except (TimeoutError, socket.timeout):
        return c, False


def served_http(addr, timeout, tls=False):
    """A keep-alive HTTP connection that has sent GET /healthz; served when 200 came within `timeout`."""
    s = socket.create_connection(addr, timeout=5)
    try:
        s.settimeout(timeout)
        if tls:
            s = tls_context().wrap_socket(s, server_hostname="127.0.0.1")
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: busgate\r\n\r\n")
        data = b""
        while b"\r\n\r\nok\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                raise Closed("the gateway closed an HTTP connection")
            data += chunk
        assert data.startswith(b"HTTP/1.1 200"), data
        return s, True
    except (TimeoutError, socket.timeout):
        return s, False


LISTENERS = {
    "tcp": lambda g, timeout: served_busgate(g.tcp, timeout),
    "tls": lambda g, timeout: served_busgate(g.listening("tls"), timeout, tls=True),
    "http": lambda g, timeout: served_http(g.http, timeout),
    "https": lambda g, timeout: served_http(g.listening("https"), timeout, tls=True),
}


def fill_to_the_limit(g, listener, conns):
    """Opens connections on `listener` until one is not served and the gateway says it paused.
    Returns the served connections and the one left waiting in the backlog."""
    served = []
    for _ in range(HELD_MAX):
        conn, ok = LISTENERS[listener](g, 1.0)
        conns.append(conn)
        if not ok and any(f"on the {listener} listener" in line or "accept failed" in line
                          for line in g.accept_lines()):
            return served, conn
        served.append(conn)
    raise AssertionError(f"{HELD_MAX} connections on the {listener} listener were all accepted")


@pytest.mark.parametrize("listener", ["tcp", "tls", "http", "https"])
def test_a_listener_at_the_descriptor_limit_waits_and_then_accepts_again(limited, cert, listener):
    g = limited(64, 64, ["--tls", "127.0.0.1:0", "--https", "127.0.0.1:0",
                         "--tls-cert", str(cert / "cert.pem"), "--tls-key", str(cert / "key.pem")])
    g.wait_log(r"file descriptors: limit 64$")  # soft == hard: nothing to raise
    keeper = g.client(name="keeper")  # connected before the limit
    limited.conns.append(keeper)

    served, waiting = fill_to_the_limit(g, listener, limited.conns)
    assert len(served) > 10, f"only {len(served)} connections before the limit"
    g.wait_log(rf"accept paused on the {listener} listener: too many open files \(limit 64 descriptors")

    # At the limit: the listener waits between attempts instead of spinning.
    lines_before, cpu_before, t0 = len(g.accept_lines()), g.cpu_seconds(), time.monotonic()
    pongs = 0
    while time.monotonic() - t0 < 2.0:
        keeper.flush(timeout=1.0)  # an open connection is still served promptly
        pongs += 1
        time.sleep(0.2)
    cpu = g.cpu_seconds() - cpu_before
    new_lines = g.accept_lines()[lines_before:]
    assert cpu < 0.3, f"the gateway used {cpu:.2f} s of CPU in 2 s at the limit"
    assert len(new_lines) <= 5, f"{len(new_lines)} accept lines in 2 s:\n" + "\n".join(new_lines[:10])
    assert pongs >= 5

    # Free a few descriptors: the connection that waited in the backlog is served, and so is a new one.
    for c in served[:10]:
        c.close()
    if listener in ("tcp", "http"):  # it sent its HELLO / request before it was accepted
        if listener == "tcp":
            assert waiting.expect(WELCOME, timeout=5)[0] == WELCOME
        else:
            waiting.settimeout(5)
            assert waiting.recv(4096).startswith(b"HTTP/1.1 200")
    t1 = time.monotonic()
    fresh, ok = LISTENERS[listener](g, 5.0)
    limited.conns.append(fresh)
    assert ok, f"a new connection on the {listener} listener was not served within 5 s of freeing descriptors"
    assert time.monotonic() - t1 < 3.0
    g.wait_log(rf"accept resumed on the {listener} listener after \d+ failures? in [\d.]+ s")
    assert g.http_get("/healthz") == (200, "ok\n")
    metrics = g.http_get("/metrics")[1]
    m = re.search(rf'^busgate_accept_errors_total{{listener="{listener}",reason="descriptors"}} (\d+)$', metrics,
                  re.M)
    assert m and int(m.group(1)) > 0, metrics
    assert f'busgate_accept_errors_total{{listener="tcp",reason="connection"}} 0' in metrics


def test_the_soft_limit_is_raised_to_the_hard_limit(limited):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"the hard descriptor limit here is {hard}")
    if soft != resource.RLIM_INFINITY and soft < 1024:  # this process holds 400 connections too
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    g = limited(256, 4096)
    g.wait_log(r"file descriptors: soft limit raised from 256 to 4096$")
    for _ in range(400):
        c, ok = served_busgate(g.tcp, 5.0)
        limited.conns.append(c)
        assert ok, f"connection {len(limited.conns)} was not served"
    metrics = g.http_get("/metrics")[1]
    assert 'busgate_connections{tenant="demo",transport="tcp"} 400' in metrics
    assert not g.accept_lines()
