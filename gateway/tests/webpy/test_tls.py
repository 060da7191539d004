"""TLS on the busgate listener (busgate+tls://), mTLS, and HTTPS/WSS, with a CA made at test time."""
import asyncio
import json
import pathlib
import socket
import ssl
import struct
import subprocess

import msgpack
import pytest
import websockets

from rawgw import MSG, RawClient


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=busgate test CA", cwd=d)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"), ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}", cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    return d


def config(pki, mtls=False):
    ca = f'\n  client_ca_file: "{pki / "ca.pem"}"' if mtls else ""
    return f"""
listen: {{tls: "127.0.0.1:0", https: "127.0.0.1:0"}}
tls:
  cert_file: "{pki / 'server.pem'}"
  key_file: "{pki / 'server.key'}"{ca}
tenants: [{{name: demo, tokens: [dev-token]}}]
"""


def listening(g, what):
    line = g.wait_log(rf"{what} listening on ")
    host, port = line.rsplit(" ", 1)[1].rsplit(":", 1)
    return host, int(port)


def tls_client(pki, addr, cert=True, max_version=None):
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if cert:
        ctx.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    if max_version:
        ctx.maximum_version = max_version
    raw = socket.create_connection(addr, timeout=5)
    c = RawClient.__new__(RawClient)
    c.sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    c.buf, c.backlog, c.welcome = b"", [], None
    return c


def test_busgate_over_tls_talks_to_plain_tcp(pki, start_gateway, clients):
    g = start_gateway(config(pki))
    addr = listening(g, "tls")
    secure = clients(tls_client(pki, addr, cert=False))
    secure.hello()
    assert secure.welcome[4] == "demo"
    secure.sub(1, "secure.>")
    plain = clients(g.client())
    plain.pub("secure.x", b"over tcp")
    assert secure.expect(MSG)[3] == b"over tcp"
    g.wait_log(r"connection open .*transport=tls")


def test_tls_below_1_2_is_refused(pki, start_gateway):
    g = start_gateway(config(pki))
    addr = listening(g, "tls")
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        tls_client(pki, addr, cert=False, max_version=ssl.TLSVersion.TLSv1_1).sock.recv(1)


def test_plain_busgate_on_the_tls_port_is_closed(pki, start_gateway):
    g = start_gateway(config(pki))
    addr = listening(g, "tls")
    s = socket.create_connection(addr, timeout=5)
    body = msgpack.packb([1, [1], {"method": "token", "token": "dev-token"}])
    s.sendall(struct.pack(">I", len(body)) + body)
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    assert not data.startswith(b"\x00")  # never a busgate frame in clear text


def test_mutual_tls(pki, start_gateway, clients):
    g = start_gateway(config(pki, mtls=True))
    addr = listening(g, "tls")
    with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
        c = tls_client(pki, addr, cert=False)
        c.hello()
    ok = clients(tls_client(pki, addr, cert=True))
    assert ok.hello()[4] == "demo"


def test_wss_and_https(pki, start_gateway):
    g = start_gateway(config(pki))
    host, port = listening(g, "https")
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))

    async def scenario():
        async with websockets.connect(f"wss://{host}:{port}/v1/ws", subprotocols=["busgate.v1.json"], ssl=ctx) as ws:
            await ws.send(json.dumps([1, [1], {"method": "token", "token": "dev-token"}]))
            welcome = json.loads(await ws.recv())
            assert welcome[0] == 2 and welcome[4] == "demo"
            await ws.send(json.dumps([11]))
            assert json.loads(await ws.recv()) == [12]

    asyncio.run(asyncio.wait_for(scenario(), 20))
    import http.client
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=5)
    conn.request("GET", "/healthz")
    r = conn.getresponse()
    assert (r.status, r.read()) == (200, b"ok\n")
    g.wait_log(r"connection open .*transport=wss-json")
