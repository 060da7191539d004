"""The same client behaviour over every transport (TCP, WebSocket binary, WebSocket JSON) and on both
buses (memory, NATS with a real nats-server). WebSocket and NATS cases are skipped, with the reason,
when the gateway binary does not support them."""
from __future__ import annotations

import asyncio
import json
import signal
import subprocess

import pytest

import busgate
from busgate import errors

from conftest import CLI, TOKEN, python_env, wait_for

TRANSPORTS = ["tcp", "ws", "ws-json"]


def endpoint(g, transport: str) -> tuple[str, dict]:
    if transport == "tcp":
        return g.url, {}
    return g.ws_url, {"ws_json": transport == "ws-json"}


@pytest.fixture(params=TRANSPORTS)
def transport(request):
    if request.param != "tcp":
        request.getfixturevalue("require_ws")
    return request.param


async def test_pubsub_request_over(transport, gateway):
    u, kw = endpoint(gateway, transport)
    async with busgate.connect(u, token=TOKEN, **kw) as c, busgate.connect(gateway.url, token=TOKEN) as tcp:
        assert c.is_connected and c.welcome.tenant == "demo"
        sub = await c.subscribe("t.>")
        await tcp.publish("t.text", "héllo", headers={"k": "v"})
        await c.publish("t.bin", b"\xff\xfe\x00\x01")  # base64 in JSON mode
        got = {m.subject: m for m in [await sub.next(3), await sub.next(3)]}  # two publishers: no order
        m1, m2 = got["t.text"], got["t.bin"]
        assert (m1.subject, m1.data, m1.headers) == ("t.text", "héllo".encode(), {"k": "v", "busgate-tenant": "demo"})
        assert m2.data == b"\xff\xfe\x00\x01"

        async def echo(msg):
            await msg.respond(msg.data[::-1])
        await c.subscribe("svc.rev", cb=echo)
        assert (await tcp.request("svc.rev", b"abc", timeout=3)).data == b"cba"
        assert (await c.request("svc.rev", b"\x00\xff", timeout=3)).data == b"\xff\x00"
        with pytest.raises(errors.NoResponders):
            await c.request("nobody", b"", timeout=2)
        with pytest.raises(errors.PermissionDenied):
            await c.publish("_INBOX.not.granted", b"x", ack=True)
        await c.flush()


async def test_cli_over_websocket_json(gateway, require_ws):
    p = subprocess.Popen([*CLI, "--url", gateway.ws_url, "--ws-json", "--token", TOKEN, "sub", "wsj", "--count", "1",
                          "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=python_env())
    try:
        assert p.stderr.readline().startswith("Subscribed")
        async with busgate.connect(gateway.url, token=TOKEN) as c:
            await c.publish("wsj", b"over json")
        out, _ = p.communicate(timeout=20)
        assert json.loads(out)["data"] == "over json"
    finally:
        p.kill()


# ------------------------------------------------------------------ NATS bus


@pytest.fixture
def nats_pair(require_nats, nats_server, start_gateway):
    """Two gateway nodes on one real nats-server."""
    return start_gateway(nats=nats_server.url), start_gateway(nats=nats_server.url)


async def test_nats_bus_across_two_gateway_nodes(nats_pair):
    a, b = nats_pair
    async with busgate.connect(a.url, token=TOKEN) as ca, busgate.connect(b.url, token=TOKEN) as cb:
        sub = await cb.subscribe("orders.*")
        q1 = await ca.subscribe("jobs", queue="workers")
        q2 = await cb.subscribe("jobs", queue="workers")
        await cb.flush()

        async def echo(msg):
            await msg.respond(b"from b:" + msg.data)
        await cb.subscribe("svc.echo", cb=echo)
        await cb.flush()
        await ca.publish("orders.created", b"x", headers={"trace-id": "1"})
        m = await sub.next(5)
        assert (m.subject, m.data, m.tenant, m.headers["trace-id"]) == ("orders.created", b"x", "demo", "1")
        for i in range(20):
            await ca.publish("jobs", str(i).encode())
        await ca.flush()
        rep = await ca.request("svc.echo", b"ping", timeout=5)
        assert rep.data == b"from b:ping"
        # the bus gives no order between the two nodes' connections: wait for the 20 (bounded)
        await wait_for(lambda: q1.pending_msgs + q2.pending_msgs >= 20, 5, "20 queue-group deliveries")
        await ca.flush()
        await cb.flush()
        got = [m.data for m in q1._q] + [m.data for m in q2._q]
        assert sorted(got, key=int) == [str(i).encode() for i in range(20)]  # each exactly once
        with pytest.raises(errors.NoResponders):
            await ca.request("nobody.there", b"", timeout=3)


async def test_nats_bus_reconnect_to_another_node(nats_pair):
    a, b = nats_pair
    reconnected = asyncio.Event()
    c = await busgate.connect(a.url, token=TOKEN, servers=[b.url], reconnect_wait=0.02,
                              on_reconnect=reconnected.set)
    sub = await c.subscribe("n.x")
    a.kill()
    await asyncio.wait_for(reconnected.wait(), 10)
    assert c.connected_url.endswith(f":{b.port}")
    async with busgate.connect(b.url, token=TOKEN) as p:
        await p.publish("n.x", b"after failover")
    assert (await sub.next(5)).data == b"after failover"
    await c.close()


async def test_nats_bus_goaway_keeps_in_flight_request(require_nats, nats_server, start_gateway):
    cfg = "timeouts: {goaway_delay_ms: 1500, drain_ms: 4000}\ntenants: [{name: demo, tokens: [dev-token]}]\n"
    a = start_gateway(cfg, nats=nats_server.url)
    b = start_gateway(cfg, nats=nats_server.url)
    reconnected = asyncio.Event()
    c = await busgate.connect(a.url, token=TOKEN, servers=[b.url], reconnect_wait=0.02, on_reconnect=reconnected.set)
    r = await busgate.connect(b.url, token=TOKEN)  # the responder is on the other node
    held = []
    arrived = asyncio.Event()

    def hold(m):
        held.append(m)
        arrived.set()
    await r.subscribe("svc.slow", cb=hold)
    await r.flush()
    req = asyncio.ensure_future(c.request("svc.slow", b"x", timeout=10))
    await asyncio.wait_for(arrived.wait(), 5)
    a.signal(signal.SIGTERM)
    await asyncio.wait_for(reconnected.wait(), 5)
    await held[0].respond(b"done")
    assert (await req).data == b"done"
    await c.close()
    await r.close()
