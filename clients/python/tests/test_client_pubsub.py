"""The asyncio client against the real gateway (memory bus): connect, pub/sub, wildcards, queue
groups, headers, callbacks, unsubscribe, flush, acks, drain, close."""
from __future__ import annotations

import asyncio

import pytest

import busgate
from busgate import errors

from conftest import TOKEN, free_port


async def test_connect_await_and_async_with(url):
    c = await busgate.connect(url, token=TOKEN, name="t1")
    assert c.is_connected and c.welcome.tenant == "demo" and c.welcome.version == 1
    assert {"max_frame", "max_payload", "heartbeat_ms", "max_subs", "max_inflight", "max_pending",
            "request_timeout_ms", "max_timeout_ms"} <= set(c.limits)
    await c.close()
    assert c.is_closed and not c.is_connected
    async with busgate.connect(url, token=TOKEN) as c2:
        assert c2.is_connected
    assert c2.is_closed


async def test_bad_token_raises_auth_failed_once(url):
    with pytest.raises(errors.AuthFailed) as info:
        await busgate.connect(url, token="wrong-token")
    assert info.value.code == 201 and info.value.fatal


async def test_no_server_raises_no_servers():
    with pytest.raises(errors.NoServers):
        await busgate.connect(f"busgate://127.0.0.1:{free_port()}", token=TOKEN, connect_timeout=2)


def test_urls():
    from busgate._transport import parse_url
    assert str(parse_url("busgate://gw-2.internal")) == "busgate://gw-2.internal:7422"
    assert parse_url("busgate+tls://gw-3").tls and parse_url("busgate+tls://gw-3").port == 7422
    assert str(parse_url("ws://h")) == "ws://h:80/v1/ws"
    assert str(parse_url("wss://h:8443/v1/ws")) == "wss://h:8443/v1/ws"
    assert parse_url("busgate://[::1]:9").host == "::1"
    for bad in ("http://h", "busgate://user:pw@h", "busgate://"):
        with pytest.raises(errors.InvalidURL):
            parse_url(bad)


async def test_publish_subscribe_headers_and_tenant(url):
    async with busgate.connect(url, token=TOKEN) as c:
        sub = await c.subscribe("orders.created")
        await c.publish("orders.created", b"hello", headers={"trace-id": "abc"})
        await c.publish("orders.created", "héllo")  # str payloads are UTF-8
        await c.publish("orders.created", b"\xff\xfe\x00\x01")
        m1, m2, m3 = [await sub.next(timeout=2) for _ in range(3)]
        assert m1.subject == "orders.created" and m1.data == b"hello"
        assert m1.headers == {"trace-id": "abc", "busgate-tenant": "demo"} and m1.tenant == "demo"
        assert m2.data == "héllo".encode() and m3.data == b"\xff\xfe\x00\x01"


async def test_wildcards(url):
    async with busgate.connect(url, token=TOKEN) as c:
        star = await c.subscribe("orders.*")
        tail = await c.subscribe("orders.>")
        for s in ("orders.created", "orders.created.eu", "orders", "other.created"):
            await c.publish(s, s.encode())
        await c.flush()
        assert [(await star.next(2)).subject] == ["orders.created"]
        got = [(await tail.next(2)).subject for _ in range(2)]
        assert got == ["orders.created", "orders.created.eu"]
        with pytest.raises(errors.Timeout):
            await star.next(timeout=0.1)
        assert tail.pending_msgs == 0


async def test_queue_group_delivers_each_message_once(url):
    async with busgate.connect(url, token=TOKEN) as a, busgate.connect(url, token=TOKEN) as b, \
            busgate.connect(url, token=TOKEN) as p:
        qa = await a.subscribe("jobs", queue="workers")
        qb = await b.subscribe("jobs", queue="workers")
        plain = await b.subscribe("jobs")
        for i in range(40):
            await p.publish("jobs", str(i).encode())
        await p.flush()
        copies = [(await plain.next(2)).data for _ in range(40)]
        await a.flush()
        await b.flush()
        got = [m.data for m in qa._q] + [m.data for m in qb._q]
        assert sorted(got) == sorted(copies) and len(set(got)) == 40  # exactly one member each


async def test_async_iterator_and_callback_forms(url):
    async with busgate.connect(url, token=TOKEN) as c:
        seen = []
        done = asyncio.Event()

        async def cb(msg):
            seen.append(msg.data)
            if len(seen) == 3:
                done.set()

        await c.subscribe("cb.x", cb=cb)
        sync_seen = []
        await c.subscribe("cb.y", cb=lambda m: sync_seen.append(m.data))
        it = await c.subscribe("it.x")
        for i in range(3):
            await c.publish("cb.x", bytes([i]))
            await c.publish("cb.y", bytes([i]))
            await c.publish("it.x", bytes([i]))
        await asyncio.wait_for(done.wait(), 2)
        out = []
        async for m in it:
            out.append(m.data)
            if len(out) == 3:
                break
        assert seen == out == [b"\x00", b"\x01", b"\x02"]
        await c.flush()
        await asyncio.sleep(0)  # let the sync callback's dispatcher run its queue
        assert sync_seen == seen


async def test_callback_errors_go_to_on_error(url):
    errs = []
    got = asyncio.Event()

    def on_error(e):
        errs.append(e)
        got.set()

    async with busgate.connect(url, token=TOKEN, on_error=on_error) as c:
        def boom(msg):
            raise ValueError("handler failed")
        await c.subscribe("boom", cb=boom)
        await c.publish("boom", b"x")
        await asyncio.wait_for(got.wait(), 2)
        assert isinstance(errs[0], ValueError)


async def test_unsubscribe_now_and_after_n(url):
    async with busgate.connect(url, token=TOKEN) as c:
        sub = await c.subscribe("u.x")
        await sub.unsubscribe()
        await c.publish("u.x", b"1")
        await c.flush()
        with pytest.raises(errors.SubscriptionClosed):
            await sub.next(timeout=0.5)
        sub2 = await c.subscribe("u.y")
        await sub2.unsubscribe(max_msgs=2)
        for i in range(5):
            await c.publish("u.y", bytes([i]))
        await c.flush()
        assert [m.data async for m in sub2] == [b"\x00", b"\x01"]


async def test_flush_is_a_barrier_and_publish_ack(url):
    async with busgate.connect(url, token=TOKEN) as c:
        sub = await c.subscribe("f.x")
        for i in range(100):
            await c.publish("f.x", b"m")
        await c.flush()
        await c.publish("f.x", b"acked", ack=True)  # returns once the bus accepted it
        await c.flush()
        assert sub.pending_msgs == 101


async def test_request_reply_with_respond(url):
    async with busgate.connect(url, token=TOKEN) as server, busgate.connect(url, token=TOKEN) as c:
        async def echo(msg):
            assert msg.reply_to.startswith("_INBOX.")
            await msg.respond(b"re:" + msg.data, headers={"x-served-by": "echo"})
        await server.subscribe("svc.echo", queue="echoers", cb=echo)
        rep = await c.request("svc.echo", b"ping", timeout=2, headers={"trace-id": "t1"})
        assert rep.data == b"re:ping" and rep.headers["x-served-by"] == "echo" and rep.tenant == "demo"
        # many concurrent requests on one connection
        reps = await asyncio.gather(*(c.request("svc.echo", str(i).encode(), timeout=5) for i in range(50)))
        assert [r.data for r in reps] == [b"re:" + str(i).encode() for i in range(50)]


async def test_plain_publish_with_reply_to(url):
    async with busgate.connect(url, token=TOKEN) as c:
        replies = await c.subscribe("replies.worker-1")
        work = await c.subscribe("work")
        await c.publish("work", b"job", reply_to="replies.worker-1")
        m = await work.next(2)
        assert m.reply_to == "replies.worker-1"
        await m.respond(b"done")
        assert (await replies.next(2)).data == b"done"


async def test_drain_lets_queued_messages_be_consumed(url):
    async with busgate.connect(url, token=TOKEN) as p:
        c = await busgate.connect(url, token=TOKEN)
        seen = []

        async def slow(msg):
            await asyncio.sleep(0.001)
            seen.append(msg.data)
        await c.subscribe("d.x", cb=slow)
        for i in range(50):
            await p.publish("d.x", str(i).encode())
        await p.flush()
        await c.flush()
        await c.drain(timeout=10)
        assert c.is_closed and len(seen) == 50
        with pytest.raises(errors.ConnectionClosed):
            await c.publish("d.x", b"late")


async def test_close_ends_iterators_and_fails_requests(url):
    c = await busgate.connect(url, token=TOKEN)
    sub = await c.subscribe("never")
    await c.subscribe("svc.never", cb=lambda m: None)  # a responder that never answers
    req = asyncio.ensure_future(c.request("svc.never", b"x", timeout=10))
    await c.flush()
    await asyncio.sleep(0)
    nxt = asyncio.ensure_future(sub.next())
    await c.close()
    with pytest.raises(errors.ConnectionClosed):
        await req
    with pytest.raises(errors.SubscriptionClosed):
        await nxt


async def test_large_payload_round_trip(url):
    async with busgate.connect(url, token=TOKEN) as c:
        sub = await c.subscribe("big")
        payload = bytes(range(256)) * 4000  # ~1 MB, below max_payload
        await c.publish("big", payload)
        assert (await sub.next(5)).data == payload
