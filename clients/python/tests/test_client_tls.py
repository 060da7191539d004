"""busgate+tls:// and wss:// against the gateway's TLS listeners, with a CA made at test time by
openssl. Skipped when the binary has no TLS listener or openssl is missing."""
from __future__ import annotations

import shutil
import ssl
import subprocess

import pytest

import busgate
from busgate import errors

from conftest import TOKEN, Gateway


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=busgate python test CA", cwd=d)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=localhost", cwd=d)
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "server.ext", cwd=d)
    return d


@pytest.fixture
def tls_gateway(binary, pki):
    cfg = f"""
listen: {{tls: "127.0.0.1:0", https: "127.0.0.1:0"}}
tls: {{cert_file: "{pki / 'server.pem'}", key_file: "{pki / 'server.key'}"}}
tenants: [{{name: demo, tokens: [dev-token]}}]
"""
    try:
        g = Gateway(binary, cfg)
    except (RuntimeError, AssertionError) as e:
        pytest.skip(f"this gateway build has no TLS listener: {str(e)[:200]}")
    tls, https = g._addr("tls"), g._addr("https")
    if not tls:
        g.kill()
        pytest.skip("this gateway build has no TLS listener")
    yield g, tls[1], (https[1] if https else None)
    g.kill()
    g.tmp.cleanup()


async def test_busgate_tls_verifies_the_gateway(tls_gateway, pki):
    g, tls_port, _ = tls_gateway
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    async with busgate.connect(f"busgate+tls://localhost:{tls_port}", token=TOKEN, tls=ctx) as c:
        sub = await c.subscribe("tls.x")
        async with busgate.connect(g.url, token=TOKEN) as plain:
            await plain.publish("tls.x", b"over tls")
        assert (await sub.next(3)).data == b"over tls"
    # the default trust roots do not know the test CA: the handshake fails, nothing is sent
    with pytest.raises(errors.NoServers) as info:
        await busgate.connect(f"busgate+tls://localhost:{tls_port}", token=TOKEN, connect_timeout=3)
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)


async def test_wss(tls_gateway, pki, require_ws):
    g, _, https_port = tls_gateway
    if https_port is None:
        pytest.skip("no https listener")
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    for ws_json in (False, True):
        async with busgate.connect(f"wss://127.0.0.1:{https_port}/v1/ws", token=TOKEN, tls=ctx, ws_json=ws_json) as c:
            sub = await c.subscribe("wss.x")
            await c.publish("wss.x", b"\x00secure")
            assert (await sub.next(3)).data == b"\x00secure"
