"""Reconnect (gateway restarted on the same port), the bounded reconnect buffer, backoff with full
jitter, dead-gateway detection by heartbeats (section 13) and GOAWAY (section 14)."""
from __future__ import annotations

import asyncio
import random
import signal

import pytest

import busgate
from busgate import errors

from conftest import TOKEN, free_port


class Events:
    """Callback recorder whose events tests await instead of sleeping."""

    def __init__(self) -> None:
        self.disconnected = asyncio.Event()
        self.reconnected = asyncio.Event()
        self.goaway = asyncio.Event()
        self.errors: list[BaseException] = []
        self.goaways: list = []

    def opts(self) -> dict:
        return {"on_disconnect": lambda e: self.disconnected.set(), "on_reconnect": self.reconnected.set,
                "on_goaway": self._goaway, "on_error": self.errors.append}

    def _goaway(self, g) -> None:
        self.goaways.append(g)
        self.goaway.set()


async def test_reconnect_after_restart_resubscribes_and_flushes_the_buffer(start_gateway):
    a = start_gateway()
    port = a.port
    ev = Events()
    c = await busgate.connect(a.url, token=TOKEN, reconnect_wait=0.02, reconnect_wait_max=0.2, **ev.opts())
    sub = await c.subscribe("r.>")
    responder = await c.subscribe("svc.hold")
    in_flight = asyncio.ensure_future(c.request("svc.hold", b"x", timeout=10))
    await responder.next(2)  # the request reached the responder; nobody answers it
    session_before = c.welcome.session_id

    a.kill()
    await asyncio.wait_for(ev.disconnected.wait(), 5)
    with pytest.raises(errors.ConnectionLost):  # in flight when the connection dropped: not re-sent
        await in_flight
    for i in range(3):  # published while disconnected: kept in the bounded buffer
        await c.publish("r.buffered", str(i).encode())
    assert c.buffered == (3, 3)
    waiting_request = asyncio.ensure_future(c.request("nobody", b"x", timeout=10))

    b = start_gateway(tcp=f"127.0.0.1:{port}")  # the same address
    await asyncio.wait_for(ev.reconnected.wait(), 10)
    assert c.is_connected and c.welcome.session_id != session_before and c.reconnects == 1
    assert c.buffered == (0, 0)
    with pytest.raises(errors.NoResponders):  # made while disconnected, sent after the reconnect
        await waiting_request
    async with busgate.connect(b.url, token=TOKEN) as other:
        await other.publish("r.after", b"after")
    got = [(await sub.next(5)).data for _ in range(4)]
    assert got == [b"0", b"1", b"2", b"after"]  # resubscribed before the buffer was sent
    await c.close()


async def test_reconnect_buffer_is_bounded_in_count_and_bytes(start_gateway):
    a = start_gateway()
    ev = Events()
    c = await busgate.connect(a.url, token=TOKEN, reconnect_buffer_msgs=5, reconnect_buffer_bytes=100,
                              reconnect_wait=1.0, **ev.opts())
    a.kill()
    await asyncio.wait_for(ev.disconnected.wait(), 5)
    for _ in range(5):
        await c.publish("x", b"1")
    with pytest.raises(errors.OutboundBufferFull):
        await c.publish("x", b"1")
    await c.close()
    c2 = await busgate.connect(start_gateway().url, token=TOKEN, reconnect_buffer_bytes=100, reconnect_wait=1.0)
    c2._conn.transport.abort()
    await asyncio.sleep(0)
    await c2.publish("x", b"a" * 60)
    with pytest.raises(errors.OutboundBufferFull):
        await c2.publish("x", b"a" * 60)
    await c2.close()


async def test_backoff_is_exponential_with_full_jitter(start_gateway, monkeypatch):
    a = start_gateway()
    bounds: list[float] = []
    real = random.uniform

    def uniform(lo, hi):
        bounds.append(hi)
        return real(lo, hi) / 50  # keep the test short; the bounds are what is checked

    monkeypatch.setattr(random, "uniform", uniform)
    closed = asyncio.Event()
    c = await busgate.connect(a.url, token=TOKEN, servers=[f"busgate://127.0.0.1:{free_port()}"],
                              reconnect_wait=0.1, reconnect_wait_max=0.8, max_reconnect_attempts=6,
                              on_disconnect=lambda e: None)
    a.kill()
    for _ in range(500):
        if c.is_closed:
            break
        await asyncio.sleep(0.01)
    closed.set()
    assert c.is_closed and isinstance(c.last_error, errors.NoServers)
    assert bounds[:6] == [0.1, 0.2, 0.4, 0.8, 0.8, 0.8]


async def test_dead_gateway_is_detected_by_heartbeats(start_gateway):
    cfg = "timeouts: {heartbeat_ms: 200, min_heartbeat_ms: 100}\ntenants: [{name: demo, tokens: [dev-token]}]\n"
    a = start_gateway(cfg)
    b = start_gateway(cfg)
    ev = Events()
    c = await busgate.connect(a.url, token=TOKEN, servers=[b.url], connect_timeout=1.0, reconnect_wait=0.02,
                              **ev.opts())
    assert c.limits["heartbeat_ms"] == 200
    sub = await c.subscribe("hb.x")
    a.signal(signal.SIGSTOP)  # alive for TCP, silent for busgate
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.wait_for(ev.disconnected.wait(), 5)
        assert loop.time() - t0 < 1.5  # 2 x heartbeat_ms plus a tick
        await asyncio.wait_for(ev.reconnected.wait(), 10)
        assert c.connected_url == str(busgate._transport.parse_url(b.url))
        async with busgate.connect(b.url, token=TOKEN) as p:
            await p.publish("hb.x", b"on b")
        assert (await sub.next(5)).data == b"on b"
    finally:
        a.signal(signal.SIGCONT)
    await c.close()


async def test_the_client_answers_gateway_pings(start_gateway):
    cfg = "timeouts: {heartbeat_ms: 100, min_heartbeat_ms: 100}\ntenants: [{name: demo, tokens: [dev-token]}]\n"
    a = start_gateway(cfg)
    ev = Events()
    c = await busgate.connect(a.url, token=TOKEN, **ev.opts())
    # idle for 6 heartbeats: the gateway PINGs, the client PONGs (and PINGs itself), nobody times out
    await asyncio.sleep(0.6)
    assert c.is_connected and not ev.disconnected.is_set() and c.reconnects == 0
    await c.flush()
    await c.close()


GOAWAY_CFG = "timeouts: {goaway_delay_ms: 1500, drain_ms: 4000}\ntenants: [{name: demo, tokens: [dev-token]}]\n"


async def test_goaway_moves_to_another_server_and_finishes_in_flight_work(start_gateway):
    a = start_gateway(GOAWAY_CFG)
    b = start_gateway(GOAWAY_CFG)
    ev_c, ev_r = Events(), Events()
    c = await busgate.connect(a.url, token=TOKEN, servers=[b.url], reconnect_wait=0.02, **ev_c.opts())
    r = await busgate.connect(a.url, token=TOKEN, servers=[b.url], reconnect_wait=0.02, **ev_r.opts())
    held: list = []
    arrived = asyncio.Event()

    async def serve(msg):
        if msg.data == b"slow":
            held.append(msg)
            arrived.set()
        else:
            await msg.respond(b"fast:" + msg.data)
    await r.subscribe("svc.work", queue="workers", cb=serve)
    events = await c.subscribe("events")
    slow = asyncio.ensure_future(c.request("svc.work", b"slow", timeout=10))
    await asyncio.wait_for(arrived.wait(), 2)

    loop = asyncio.get_running_loop()
    t0 = loop.time()
    a.signal(signal.SIGTERM)
    await asyncio.wait_for(ev_c.goaway.wait(), 5)
    assert ev_c.goaways[0].delay_ms == 1500
    await asyncio.wait_for(ev_c.reconnected.wait(), 5)
    await asyncio.wait_for(ev_r.reconnected.wait(), 5)
    assert c.connected_url.endswith(f":{b.port}") and r.connected_url.endswith(f":{b.port}")
    # new work goes over the new connections
    assert (await c.request("svc.work", b"1", timeout=5)).data == b"fast:1"
    await r.publish("events", b"via b")
    assert (await events.next(5)).data == b"via b"
    # the request in flight on the old connection is still answered there, within the delay
    assert not slow.done()
    await held[0].respond(b"answered on the old connection")
    assert (await slow).data == b"answered on the old connection"
    # both clients closed their old connections once their work was done: A exits before the delay
    assert await loop.run_in_executor(None, a.proc.wait, 5) == 0
    assert loop.time() - t0 < 1.5
    assert not ev_c.disconnected.is_set()  # a GOAWAY is not a disconnect
    await c.close()
    await r.close()


async def test_goaway_cuts_requests_still_in_flight_at_the_delay(start_gateway):
    cfg = "timeouts: {goaway_delay_ms: 300, drain_ms: 3000}\ntenants: [{name: demo, tokens: [dev-token]}]\n"
    a = start_gateway(cfg)
    b = start_gateway(cfg)
    ev = Events()
    c = await busgate.connect(a.url, token=TOKEN, servers=[b.url], reconnect_wait=0.02, **ev.opts())
    r = await busgate.connect(a.url, token=TOKEN, servers=[b.url], reconnect_wait=0.02)
    held: list = []
    await r.subscribe("svc.never", cb=held.append)
    req = asyncio.ensure_future(c.request("svc.never", b"x", timeout=10))
    await r.flush()
    await c.flush()
    a.signal(signal.SIGTERM)
    with pytest.raises(errors.ShuttingDown) as info:
        await asyncio.wait_for(req, 5)
    assert info.value.code == 601
    await asyncio.wait_for(ev.reconnected.wait(), 5)
    assert c.is_connected
    await c.close()
    await r.close()


async def test_goaway_then_reconnect_to_the_same_address_after_restart(start_gateway):
    cfg = "timeouts: {goaway_delay_ms: 200, drain_ms: 1000}\ntenants: [{name: demo, tokens: [dev-token]}]\n"
    a = start_gateway(cfg)
    port = a.port
    ev = Events()
    c = await busgate.connect(a.url, token=TOKEN, reconnect_wait=0.02, reconnect_wait_max=0.2, **ev.opts())
    sub = await c.subscribe("same.x")
    a.signal(signal.SIGTERM)
    await asyncio.wait_for(ev.goaway.wait(), 5)
    await c.publish("same.x", b"during")  # buffered: no new work on a connection that got GOAWAY
    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, a.proc.wait, 5) == 0
    b = start_gateway(cfg, tcp=f"127.0.0.1:{port}")
    await asyncio.wait_for(ev.reconnected.wait(), 10)
    assert (await sub.next(5)).data == b"during"
    async with busgate.connect(b.url, token=TOKEN) as p:
        await p.publish("same.x", b"after")
    assert (await sub.next(5)).data == b"after"
    await c.close()


async def test_a_long_stalled_consumer_is_cut_off_by_the_gateway_and_comes_back(start_gateway):
    """What the README promises for a consumer that stops consuming: its local queue stays bounded,
    the client stops reading, the gateway's bounded queue fills, the gateway disconnects it
    (SLOW_CONSUMER), and the client reconnects and resubscribes; what was queued in the gateway for the
    old connection is lost (at most once)."""
    cfg = ("limits: {max_pending_bytes: 65536}\ntimeouts: {heartbeat_ms: 300, min_heartbeat_ms: 100}\n"
           "tenants: [{name: demo, tokens: [dev-token]}]\n")
    g = start_gateway(cfg)
    ev = Events()
    c = await busgate.connect(g.url, token=TOKEN, reconnect_wait=0.02, pending_msgs_limit=10, **ev.opts())
    sub = await c.subscribe("feed")
    async with busgate.connect(g.url, token=TOKEN) as p:
        # More than the kernel's socket buffers take in (loopback autotunes them to megabytes): the
        # gateway waits for a consumer that shows progress, so only a full pipe makes its queue fill.
        n = 30000
        for i in range(n):
            await p.publish("feed", b"x" * 1024)
        await p.flush()
        assert sub.pending_msgs <= 10  # bounded locally: the rest is not read
        await asyncio.wait_for(ev.disconnected.wait(), 15)  # the gateway gave up on us
        got = 0
        while sub.pending_msgs:
            await sub.next(1)
            got += 1
        await asyncio.wait_for(ev.reconnected.wait(), 10)
        assert got < n and sub.max_pending_seen <= 10
        await c.flush()
        await p.publish("feed", b"fresh")
        while (await sub.next(5)).data != b"fresh":
            pass
    g.wait_log(r"connection closed .*reason=\"SLOW_CONSUMER")
    await c.close()
