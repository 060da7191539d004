"""Every typed error the client raises, produced by the real gateway (or by the client's own checks
before sending, which use the same classes and codes)."""
from __future__ import annotations

import asyncio
import signal

import pytest

import busgate
from busgate import errors

from conftest import sha

CONFIG = f"""
timeouts: {{request_ms: 300, max_request_ms: 2000}}
tenants:
  - name: demo
    tokens_sha256: ["{sha('demo-token-1')}", "{sha('demo-token-2')}"]
    permissions:
      publish: {{deny: ["secret.>"]}}
      subscribe: {{deny: ["secret.>"]}}
      request: {{deny: ["forbidden.>"]}}
    limits: {{max_payload: 1000, max_subscriptions: 3, max_inflight_requests: 1}}
  - name: small
    tokens: [small-token-1]
    limits: {{max_connections: 1, publish_msgs_per_sec: 2}}
"""
RELOADED = f"""
timeouts: {{request_ms: 300, max_request_ms: 2000}}
tenants:
  - name: demo
    tokens_sha256: ["{sha('demo-token-2')}"]
  - name: small
    tokens: [small-token-1]
"""


@pytest.fixture
def gw(start_gateway):
    return start_gateway(CONFIG)


def connect(gw, token="demo-token-1", **kw):
    return busgate.connect(gw.url, token=token, **kw)


async def test_no_responders(gw):
    async with connect(gw) as c:
        with pytest.raises(errors.NoResponders) as info:
            await c.request("nobody.home", b"x", timeout=2)
        assert info.value.code == 500 and isinstance(info.value, errors.RequestError)


async def test_request_timeout_explicit_and_default(gw):
    async with connect(gw) as c, connect(gw, "demo-token-2") as r:
        await r.subscribe("svc.silent", cb=lambda m: None)  # never answers
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(errors.Timeout) as info:
            await c.request("svc.silent", b"x", timeout=0.2)
        assert info.value.code == 501 and isinstance(info.value, TimeoutError)
        assert 0.15 < loop.time() - t0 < 1.5
        with pytest.raises(errors.Timeout):  # no timeout: the gateway's request_ms (300 ms)
            await c.request("svc.silent", b"x")


async def test_permission_denied_for_request_subscribe_and_publish(gw):
    errs: list[BaseException] = []
    got = asyncio.Event()

    def on_error(e):
        errs.append(e)
        got.set()

    async with connect(gw, on_error=on_error) as c:
        with pytest.raises(errors.PermissionDenied):
            await c.request("forbidden.x", b"x", timeout=1)
        with pytest.raises(errors.PermissionDenied) as info:
            await c.subscribe("secret.stuff")
        assert info.value.ref_op == 4
        with pytest.raises(errors.PermissionDenied):
            await c.publish("secret.stuff", b"x", ack=True)
        await c.publish("secret.stuff", b"x")  # without ack: reported to on_error
        await asyncio.wait_for(got.wait(), 2)
        assert isinstance(errs[0], errors.PermissionDenied) and errs[0].code == 306
        # the connection is still fine
        assert (await c.subscribe("public.x")) is not None


async def test_permission_denied_for_an_inbox_without_a_grant(gw):
    async with connect(gw) as c:
        with pytest.raises(errors.PermissionDenied):
            await c.publish("_INBOX.gw.someone-else", b"x", ack=True)


async def test_too_many_requests(gw):
    async with connect(gw) as c, connect(gw, "demo-token-2") as r:
        held = []
        arrived = asyncio.Event()

        def hold(m):
            held.append(m)
            arrived.set()
        await r.subscribe("svc.slow", cb=hold)
        first = asyncio.ensure_future(c.request("svc.slow", b"1", timeout=2))
        await asyncio.wait_for(arrived.wait(), 2)
        with pytest.raises(errors.TooManyRequests) as info:
            await c.request("svc.slow", b"2", timeout=2)
        assert info.value.code == 403 and isinstance(info.value, errors.LimitError)
        await held[0].respond(b"ok")
        assert (await first).data == b"ok"


async def test_payload_too_large_local_and_from_the_gateway(gw):
    async with connect(gw) as c:
        assert c.limits["max_payload"] == 1000
        with pytest.raises(errors.PayloadTooLarge):
            await c.publish("big", b"x" * 1001)
        with pytest.raises(errors.PayloadTooLarge):
            await c.request("big", b"x" * 1001, timeout=1)
        c._conn.max_payload = 10**6  # skip the local check: the gateway answers the same code
        with pytest.raises(errors.PayloadTooLarge):
            await c.request("big", b"x" * 2000, timeout=1)
        with pytest.raises(errors.PayloadTooLarge):
            await c.publish("big", b"x" * 2000, ack=True)


async def test_too_many_subscriptions(gw):
    async with connect(gw) as c:
        for i in range(3):
            await c.subscribe(f"s.{i}")
        with pytest.raises(errors.TooManySubscriptions):
            await c.subscribe("s.3")


async def test_rate_limited(gw):
    async with connect(gw, "small-token-1") as c:
        results = await asyncio.gather(*(c.publish("r.x", b"m", ack=True) for _ in range(6)),
                                       return_exceptions=True)
        limited = [r for r in results if isinstance(r, errors.RateLimited)]
        assert limited and all(r is None or isinstance(r, errors.RateLimited) for r in results)
        assert limited[0].code == 402


async def test_too_many_connections(gw):
    async with connect(gw, "small-token-1"):
        with pytest.raises(errors.TooManyConnections) as info:
            await connect(gw, "small-token-1")
        assert info.value.fatal


@pytest.mark.parametrize("call,err", [
    (lambda c: c.publish("a..b", b""), errors.InvalidSubject),
    (lambda c: c.publish("a.*", b""), errors.WildcardNotAllowed),
    (lambda c: c.publish("$SYS.x", b""), errors.ReservedSubject),
    (lambda c: c.publish("a", b"", reply_to="r.>"), errors.WildcardNotAllowed),
    (lambda c: c.publish("a", b"", headers={"busgate-tenant": "x"}), errors.ReservedHeader),
    (lambda c: c.publish("a", b"", headers={"bad key": "x"}), errors.InvalidHeader),
    (lambda c: c.request("a.>", b""), errors.WildcardNotAllowed),
    (lambda c: c.subscribe("a*"), errors.InvalidSubject),
    (lambda c: c.subscribe("a", queue="q.1"), errors.InvalidQueue),
])
async def test_grammar_errors_are_raised_before_sending(gw, call, err):
    async with connect(gw) as c:
        with pytest.raises(err) as info:
            await call(c)
        assert isinstance(info.value, errors.SubjectError) and info.value.code == errors.CODES[info.value.name]
        await c.flush()  # nothing reached the gateway that could have closed the connection
        assert c.is_connected


async def test_auth_revoked_closes_without_retrying(gw):
    errs: list[BaseException] = []
    revoked = asyncio.Event()

    def on_error(e):
        errs.append(e)
        if isinstance(e, errors.AuthRevoked):
            revoked.set()

    c = await connect(gw, on_error=on_error)
    keep = await connect(gw, "demo-token-2")
    gw.config_path.write_text(RELOADED)
    gw.signal(signal.SIGHUP)
    await asyncio.wait_for(revoked.wait(), 5)
    for _ in range(200):
        if c.is_closed:
            break
        await asyncio.sleep(0.01)
    assert c.is_closed and c.reconnects == 0
    with pytest.raises(errors.ConnectionClosed):
        await c.publish("x", b"")
    await keep.flush()  # the other token's connection is untouched
    await keep.close()
