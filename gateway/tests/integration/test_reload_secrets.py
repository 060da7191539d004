"""A reload (SIGHUP, POST /admin/reload) applies the admin token and the TLS certificate read afresh
(docs/operations.md, "Reload"): the new admin token opens the admin API and the old one gets 401;
new TLS connections (busgate+tls, HTTPS) get the new certificate while open ones go on; a key that
cannot be used makes the reload fail, naming the key, and the running certificate stays."""
from __future__ import annotations

import http.client
import json
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time

import pytest

from rawgw import MSG, RawClient

ADMIN_OLD = "admin-token-before-9c1e"
ADMIN_NEW = "admin-token-after-4d7b"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA and two server certificates for 127.0.0.1 told apart by their CN: busgate-a, busgate-b."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=busgate reload CA", cwd=d)
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("a", "b"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN=busgate-{name}", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2", "-extfile", "server.ext", cwd=d)
    return d


def admin(g, method: str, path: str, token: str | None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(*g.http, timeout=10)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    conn.request(method, path, body=b"" if method == "POST" else None, headers=headers)
    r = conn.getresponse()
    return r.status, json.loads(r.read() or b"{}")


def reload_by_signal(g, expect: str, timeout=10.0) -> str:
    """SIGHUP, then the first log line after it that matches the pattern `expect`."""
    seen = len(g.log_lines)
    g.signal(signal.SIGHUP)
    rx = re.compile(expect)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in g.log_lines[seen:]:
            if rx.search(line):
                return line
        time.sleep(0.02)
    raise AssertionError(f"log line /{expect}/ not seen after SIGHUP:\n" + "\n".join(g.log_lines[seen:]))


def listening(g, what):
    line = g.wait_log(rf"{what} listening on ")
    host, port = line.rsplit(" ", 1)[1].rsplit(":", 1)
    return host, int(port)


def client_context(pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki / "ca.pem"))


def peer_cn(sock: ssl.SSLSocket) -> str:
    subject = dict(item for rdn in sock.getpeercert()["subject"] for item in rdn)
    return subject["commonName"]


def tls_client(pki, addr) -> RawClient:
    raw = socket.create_connection(addr, timeout=5)
    c = RawClient.__new__(RawClient)
    c.sock = client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1")
    c.buf, c.backlog, c.welcome = b"", [], None
    return c


def https_cn_and_health(pki, addr) -> tuple[str, int]:
    conn = http.client.HTTPSConnection(*addr, context=client_context(pki), timeout=5)
    try:
        conn.request("GET", "/healthz")
        status = conn.getresponse().status
        return peer_cn(conn.sock), status
    finally:
        conn.close()


def test_a_reload_swaps_the_admin_token_and_can_disable_the_admin_api(tmp_path, start_gateway):
    token_file = tmp_path / "admin-token"
    token_file.write_text(ADMIN_OLD + "\n")
    cfg = f"""
admin: {{token: {{file: "{token_file}"}}}}
tenants: [{{name: demo, tokens: [dev-token]}}]
"""
    g = start_gateway(cfg)
    assert admin(g, "GET", "/admin/connections", ADMIN_OLD)[0] == 200
    assert admin(g, "GET", "/admin/connections", ADMIN_NEW)[0] == 401

    token_file.write_text(ADMIN_NEW + "\n")
    reload_by_signal(g, "reload: admin token replaced")
    assert admin(g, "GET", "/admin/connections", ADMIN_NEW)[0] == 200
    status, body = admin(g, "GET", "/admin/connections", ADMIN_OLD)
    assert status == 401, body

    # A reload through the admin API itself, with the file naming no admin token: answered with
    # the token that opened it, then the admin API is disabled as when none is configured.
    g.config_path.write_text("tenants: [{name: demo, tokens: [dev-token]}]\n")
    assert admin(g, "POST", "/admin/reload", ADMIN_NEW) == (200, {"reloaded": True})
    g.wait_log("reload: admin API disabled")
    for token in (ADMIN_NEW, ADMIN_OLD, None):
        assert admin(g, "GET", "/admin/connections", token)[0] == 403
    assert not any(ADMIN_OLD in line or ADMIN_NEW in line for line in g.log_lines)


def test_a_reload_serves_the_new_certificate_to_new_connections_only(pki, tmp_path, start_gateway, clients):
    live = tmp_path / "live"
    live.mkdir()
    cert, key = live / "server.pem", live / "server.key"
    shutil.copy(pki / "a.pem", cert)
    shutil.copy(pki / "a.key", key)
    cfg = f"""
listen: {{tls: "127.0.0.1:0", https: "127.0.0.1:0"}}
tls: {{cert_file: "{cert}", key_file: "{key}"}}
admin: {{token: {ADMIN_OLD}}}
tenants: [{{name: demo, tokens: [dev-token]}}]
"""
    g = start_gateway(cfg)
    tls_addr, https_addr = listening(g, "tls"), listening(g, "https")

    before = clients(tls_client(pki, tls_addr))
    assert peer_cn(before.sock) == "busgate-a"
    before.hello()
    before.sub(1, "rotate.>")
    assert https_cn_and_health(pki, https_addr) == ("busgate-a", 200)

    shutil.copy(pki / "b.pem", cert)
    shutil.copy(pki / "b.key", key)
    reload_by_signal(g, "reload: new TLS connections use the certificate")

    # The connection opened before the reload goes on with its session.
    before.flush()
    after = clients(tls_client(pki, tls_addr))
    assert peer_cn(after.sock) == "busgate-b"
    after.hello()
    after.pub("rotate.x", b"after the reload")
    assert before.expect(MSG)[3] == b"after the reload"
    assert https_cn_and_health(pki, https_addr) == ("busgate-b", 200)

    # A key file that is not a key: POST /admin/reload answers 422 naming the key; nothing changes.
    key.write_text("-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")
    status, body = admin(g, "POST", "/admin/reload", ADMIN_OLD)
    assert status == 422 and body["error"].startswith("tls.key_file:"), body
    # Certificate A with key B (a pair that does not match), by signal: logged, nothing changes.
    shutil.copy(pki / "a.pem", cert)
    shutil.copy(pki / "b.key", key)
    reload_by_signal(g, r"reload failed, keeping the current tenants: tls\.key_file:")

    newest = clients(tls_client(pki, tls_addr))
    assert peer_cn(newest.sock) == "busgate-b"
    newest.hello()
    assert https_cn_and_health(pki, https_addr) == ("busgate-b", 200)
    before.flush()
    after.flush()
