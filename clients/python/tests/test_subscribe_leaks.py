"""subscribe() that gives up leaves nothing behind (against the real gateway): a subscribe() cancelled
while it waits for the OK is not kept (not made again on a reconnect) and what the gateway made of its
SUB is ended when the OK arrives; one that timed out is UNSUBed likewise, so neither counts against
max_subs. The gateway is held with SIGSTOP so that its OK arrives after the client gave up."""
from __future__ import annotations

import asyncio
import signal

import pytest

import busgate
from busgate import errors

from conftest import TOKEN, close_connection, durable_config, subscriptions_of

CONFIG = durable_config('[{name: events, subjects: ["events.>"], retention: limits}]', "[]",
                        limits="{max_consumers: 5, max_subscriptions: 3}")


@pytest.fixture
def gw(start_gateway):
    g = start_gateway(CONFIG)
    yield g
    g.signal(signal.SIGCONT)


def subjects(gw, c) -> list[str]:
    return sorted(s["subject"] for s in subscriptions_of(gw, c.welcome.session_id))


async def test_cancelled_subscribe_is_not_kept_and_its_late_ok_is_unsubscribed(gw):
    reconnected = asyncio.Event()
    async with busgate.connect(gw.url, token=TOKEN, reconnect_wait=0.01, on_reconnect=reconnected.set) as c:
        await c.subscribe("keep.a")
        gw.signal(signal.SIGSTOP)
        try:
            tasks = [asyncio.ensure_future(c.subscribe(f"leak.{i}")) for i in range(3)]
            tasks.append(asyncio.ensure_future(c.subscribe("events.x", durable="leaky")))
            await asyncio.sleep(0.1)  # the SUBs are written; no answer while the gateway is stopped
            for t in tasks:
                t.cancel()
            for t in tasks:
                with pytest.raises(asyncio.CancelledError):
                    await t
        finally:
            gw.signal(signal.SIGCONT)
        await c.flush()  # the late OKs are in (and answered with UNSUB) ...
        await c.flush()  # ... and the UNSUBs are processed
        assert subjects(gw, c) == ["keep.a"]
        # max_subscriptions is 3: two more fit, a third does not
        await c.subscribe("b")
        await c.subscribe("c")
        with pytest.raises(errors.TooManySubscriptions):
            await c.subscribe("d")
        # a reconnect makes only the subscriptions that are live again
        old = c.welcome.session_id
        close_connection(gw, old)
        await asyncio.wait_for(reconnected.wait(), 10)
        await c.flush()
        assert c.welcome.session_id != old
        assert subjects(gw, c) == ["b", "c", "keep.a"]


async def test_subscribe_that_timed_out_is_unsubscribed_when_its_ok_arrives(gw):
    async with busgate.connect(gw.url, token=TOKEN) as c:
        await c.subscribe("keep.a")
        gw.signal(signal.SIGSTOP)
        try:
            for subject in ("late.a", "late.b"):
                with pytest.raises(errors.Timeout):
                    await c.subscribe(subject, timeout=0.2)
        finally:
            gw.signal(signal.SIGCONT)
        await c.flush()
        await c.flush()
        assert subjects(gw, c) == ["keep.a"]
        await c.subscribe("x")
        await c.subscribe("y")  # the two given up do not count against max_subscriptions (3)
        with pytest.raises(errors.TooManySubscriptions):
            await c.subscribe("z")
        # and their sids were free again only once answered: no SID_IN_USE on the way
        assert subjects(gw, c) == ["keep.a", "x", "y"]
