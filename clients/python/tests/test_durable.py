"""Durable consumption (docs/protocol.md section 16) through the client API, against the real gateway
(memory bus) configured with streams and consumers: stored publishes with ack and msg_id, NOT_STORED,
consumption across connections, the max_inflight window kept with credits, ack / nak(delay) /
in_progress / term, attempt counts, dead letters, reconnects, and the sync facade."""
from __future__ import annotations

import asyncio
import json
import signal
import subprocess

import pytest

import busgate
from busgate import errors
from busgate.sync import connect as sync_connect

from conftest import CLI, TOKEN, close_connection, durable_config, python_env

STREAMS = """
      - {name: jobs, subjects: ["jobs.>"], retention: workqueue}
      - {name: small, subjects: ["small.>"], retention: workqueue, max_msgs: 2}
      - {name: events, subjects: ["events.>"], retention: limits}
      - {name: dead, subjects: ["deadletter.>"], retention: limits}"""
CONSUMERS = """
      - {name: api, stream: jobs, subject: "jobs.api.>", max_inflight: 10, ack_wait_ms: 2000, max_deliveries: 5}
      - {name: window, stream: jobs, subject: jobs.window, max_inflight: 50, ack_wait_ms: 5000, max_deliveries: 5}
      - {name: retry, stream: jobs, subject: jobs.retry, max_inflight: 4, ack_wait_ms: 500, max_deliveries: 3}
      - {name: slow, stream: jobs, subject: jobs.slow, max_inflight: 4, ack_wait_ms: 400, max_deliveries: 5}
      - {name: backoff, stream: jobs, subject: jobs.backoff, max_inflight: 4, ack_wait_ms: 5000,
         max_deliveries: 5, backoff_ms: [300]}"""
CONFIG = durable_config(STREAMS, CONSUMERS)


@pytest.fixture
def gw(durable_gateway):
    """The gateway with CONFIG, on the memory bus and on NATS (JetStream)."""
    return durable_gateway(CONFIG)


def connect(gw, **kw):
    return busgate.connect(gw.url, token=TOKEN, **kw)


async def no_message(sub, seconds: float = 0.4) -> bool:
    """True when nothing arrives within `seconds` (a negative claim needs a window)."""
    try:
        await sub.next(seconds)
    except errors.Timeout:
        return True
    return False


async def test_publish_with_ack_and_msg_id_is_stored_once(gw):
    async with connect(gw) as c:
        await c.publish("jobs.api.a", b"first", ack=True, msg_id="job-1")
        await c.publish("jobs.api.a", b"first again", ack=True, msg_id="job-1")  # a re-send: OK, not stored
        await c.publish("jobs.api.b", b"second", ack=True, msg_id="job-2")
        await c.publish("jobs.api.c", b"third", ack=True)  # stored, no key
        with pytest.raises(errors.InvalidOption):  # checked before sending, with the gateway's code
            await c.publish("jobs.api.d", b"x", ack=True, msg_id="has space")
        sub = await c.subscribe("jobs.api.>", durable="api", max_inflight=10)
        got = []
        for _ in range(3):
            m = await sub.next(5)
            got.append((m.subject, m.data, m.attempt))
            assert await m.ack() is True
        assert got == [("jobs.api.a", b"first", 1), ("jobs.api.b", b"second", 1), ("jobs.api.c", b"third", 1)]
        assert await no_message(sub)


async def test_not_stored_when_a_workqueue_stream_is_full(gw):
    async with connect(gw) as c:
        await c.publish("small.a", b"1", ack=True)
        await c.publish("small.a", b"2", ack=True)
        with pytest.raises(errors.NotStored) as info:
            await c.publish("small.a", b"3", ack=True)
        assert info.value.code == 504 and info.value.name == "NOT_STORED" and isinstance(info.value, errors.RequestError)


async def test_published_while_nobody_consumes_is_consumed_later_on_another_connection(gw):
    async with connect(gw) as p:
        for i in range(6):
            await p.publish("jobs.api.x", str(i).encode(), ack=True)
    # nothing is subscribed while they are stored; a first consumer takes two, then goes away
    async with connect(gw) as a:
        sub = await a.subscribe("jobs.api.>", durable="api", max_inflight=2)
        first = [await sub.next(5) for _ in range(2)]
        assert [m.data for m in first] == [b"0", b"1"] and [m.attempt for m in first] == [1, 1]
        assert first[0].delivery_id < first[1].delivery_id
        for m in first:
            assert await m.ack()
    # a consumer on a new connection gets the rest: nothing acknowledged comes back, nothing is lost
    async with connect(gw) as b:
        sub = await b.subscribe("jobs.api.>", durable="api", max_inflight=4)
        rest = []
        for _ in range(4):
            m = await sub.next(5)
            rest.append(m.data)
            await m.ack()
        assert sorted(rest) == [b"2", b"3", b"4", b"5"]
        assert await no_message(sub)


async def test_the_window_holds_at_most_max_inflight_and_the_backlog_stays_on_the_bus(gw):
    async with connect(gw) as c:
        for i in range(20):
            await c.publish("jobs.window", str(i).encode(), ack=True)
        sub = await c.subscribe("jobs.window", durable="window", max_inflight=3)
        await c.flush()
        await asyncio.sleep(0.3)  # a window for more to arrive, if the window leaked
        assert sub.pending_msgs == 3 and sub.unsettled == 3
        held = [await sub.next(1) for _ in range(3)]
        assert await no_message(sub, 0.3)  # taken but not settled: still the whole window
        assert sub.unsettled == 3
        await held[0].ack()  # one place frees up: exactly one more comes
        nxt = await sub.next(5)
        assert nxt.data == b"3" and await no_message(sub, 0.3)
        for m in held[1:] + [nxt]:
            await m.ack()
        got = []
        while len(got) < 16:
            m = await sub.next(5)
            got.append(int(m.data))
            assert sub.unsettled <= 3
            await m.ack()
        assert got == list(range(4, 20))


async def test_nak_with_a_delay_redelivers_as_the_next_attempt(gw):
    async with connect(gw) as c:
        await c.publish("jobs.retry", b"job", ack=True)
        sub = await c.subscribe("jobs.retry", durable="retry")
        m1 = await sub.next(5)
        assert m1.attempt == 1 and not m1.settled
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await m1.nak(delay=0.3) is True
        assert m1.settled
        with pytest.raises(errors.DeliverySettled):
            await m1.ack()
        m2 = await sub.next(5)
        assert loop.time() - t0 >= 0.25
        assert (m2.data, m2.attempt) == (b"job", 2) and m2.delivery_id != m1.delivery_id
        await m2.ack()
        assert await no_message(sub, 0.8)  # acknowledged: gone, even after the ack wait


async def test_nak_without_a_delay_uses_the_consumers_backoff(gw):
    async with connect(gw) as c:
        await c.publish("jobs.backoff", b"job", ack=True)
        sub = await c.subscribe("jobs.backoff", durable="backoff")
        m1 = await sub.next(5)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await m1.nak()
        m2 = await sub.next(5)
        assert loop.time() - t0 >= 0.25 and m2.attempt == 2  # backoff_ms [300]
        await m2.ack()


async def test_in_progress_keeps_a_delivery_past_its_ack_wait(gw):
    errs: list = []
    async with connect(gw, on_error=errs.append) as a, connect(gw) as b:
        await a.publish("jobs.slow", b"long job", ack=True)
        sa = await a.subscribe("jobs.slow", durable="slow")
        m = await sa.next(5)
        sb = await b.subscribe("jobs.slow", durable="slow")  # another replica, idle
        for _ in range(6):  # 1.2 s of work, three ack waits; PROGRESS every 0.2 s
            await asyncio.sleep(0.2)
            assert await m.in_progress() is True
        assert await no_message(sb, 0.1)  # not redelivered while in progress
        assert await m.ack()
        await a.flush()
        assert await no_message(sb, 0.6) and await no_message(sa, 0.1)
        assert not errs

        # the same without PROGRESS: after the ack wait it goes to the other replica, attempt 2
        await sb.unsubscribe()  # (which idle replica gets a new message first is not specified)
        await a.publish("jobs.slow", b"stuck job", ack=True)
        m = await sa.next(5)
        sb = await b.subscribe("jobs.slow", durable="slow")
        r = await sb.next(3)
        assert (r.data, r.attempt) == (b"stuck job", 2)
        # the late ACK is sent (the connection is live) and the gateway answers UNKNOWN_DELIVERY,
        # reported to on_error; nothing raises
        assert await m.ack() is True
        await a.flush()
        assert any(isinstance(e, errors.UnknownDelivery) and e.ref_op == 14 and e.ref_id == sa.sid for e in errs)
        await r.ack()


async def test_term_dead_letters_at_once_with_the_reason(gw):
    async with connect(gw) as c:
        dead = await c.subscribe("deadletter.retry")
        await c.publish("jobs.retry", b"poison", {"trace-id": "t1"}, ack=True)
        sub = await c.subscribe("jobs.retry", durable="retry")
        m = await sub.next(5)
        assert await m.term("cannot parse") is True
        d = await dead.next(5)
        assert d.data == b"poison" and d.headers["trace-id"] == "t1"
        assert d.headers["busgate-dead-reason"] == "terminated: cannot parse"
        assert d.headers["busgate-attempts"] == "1" and d.headers["busgate-subject"] == "jobs.retry"
        assert d.headers["busgate-stream"] == "jobs" and d.headers["busgate-consumer"] == "retry"
        assert await no_message(sub, 0.7)  # not redelivered


async def test_dead_letter_after_max_deliveries(gw):
    async with connect(gw) as c:
        dead = await c.subscribe("deadletter.retry")
        await c.publish("jobs.retry", b"fails", ack=True)
        sub = await c.subscribe("jobs.retry", durable="retry")
        attempts = []
        for _ in range(3):  # max_deliveries: 3
            m = await sub.next(5)
            attempts.append(m.attempt)
            await m.nak(delay=0.01)
        assert attempts == [1, 2, 3]
        d = await dead.next(5)
        assert d.data == b"fails"
        assert d.headers["busgate-dead-reason"] == "max_deliveries" and d.headers["busgate-attempts"] == "3"
        assert d.headers["busgate-consumer"] == "retry" and d.headers["busgate-subject"] == "jobs.retry"
        assert await no_message(sub, 0.3)
        # the dead-letter stream stored it: a durable consumer created by a SUB reads it
        dl = await c.subscribe("deadletter.retry", durable="dl-reader")
        stored = await dl.next(5)
        assert stored.data == b"fails" and stored.headers["busgate-dead-reason"] == "max_deliveries"
        await stored.ack()


async def test_reconnect_resubscribes_and_forgets_deliveries_of_the_old_connection(gw):
    errs: list = []
    reconnected = asyncio.Event()
    async with connect(gw, on_error=errs.append, on_reconnect=reconnected.set, reconnect_wait=0.01) as c:
        await c.publish("jobs.api.r", b"held", ack=True)
        sub = await c.subscribe("jobs.api.>", durable="api", max_inflight=2)
        held = await sub.next(5)
        assert held.attempt == 1 and not held.stale
        close_connection(gw, c.welcome.session_id)  # the gateway releases what the connection held
        await asyncio.wait_for(reconnected.wait(), 10)
        again = await sub.next(5)  # made again on the new connection, same durable
        assert (again.data, again.attempt) == (b"held", 2) and not again.stale
        # the old delivery is stale: settling it sends nothing and does not raise
        assert held.stale and await held.ack() is False and held.settled
        assert await again.ack() is True
        # the whole window is granted again on the new connection
        for i in range(4):
            await c.publish("jobs.api.r", str(i).encode(), ack=True)
        got = []
        for _ in range(4):
            m = await sub.next(5)
            got.append(m.data)
            await m.ack()
        assert got == [b"0", b"1", b"2", b"3"]
        await c.flush()
        assert not [e for e in errs if not isinstance(e, errors.ClosedByAdmin)]


async def test_durable_subscription_errors_are_typed(gw):
    async with connect(gw) as c:
        with pytest.raises(errors.UnknownStream):  # no stream stores it
            await c.subscribe("nowhere.x", durable="nobody")
        with pytest.raises(errors.InvalidOption):  # a declared consumer's subject is its filter
            await c.subscribe("jobs.api.only", durable="api")
        with pytest.raises(errors.InvalidOption):  # checked locally
            await c.subscribe("jobs.api.>", durable="bad name")
        with pytest.raises(errors.InvalidOption):
            await c.subscribe("jobs.api.>", max_inflight=3)  # needs durable=
        plain = await c.subscribe("events.x")
        await c.publish("events.x", b"plain")
        m = await plain.next(5)
        with pytest.raises(errors.NotDurable):
            await m.ack()
        assert m.delivery_id is None and m.attempt is None


async def test_deliver_new_and_all_for_consumers_created_by_a_sub(gw):
    async with connect(gw) as c:
        await c.publish("events.e", b"old", ack=True)
        new = await c.subscribe("events.e", durable="from-now", deliver="new")
        every = await c.subscribe("events.e", durable="from-start", max_inflight=5)
        await c.publish("events.e", b"fresh", ack=True)
        assert (await new.next(5)).data == b"fresh"
        assert [(await every.next(5)).data for _ in range(2)] == [b"old", b"fresh"]


async def test_goaway_settles_what_was_taken_on_the_old_connection(start_gateway):
    cfg = durable_config(STREAMS, CONSUMERS, extra="timeouts: {goaway_delay_ms: 1500, drain_ms: 4000}")
    a, b = start_gateway(cfg), start_gateway(cfg)
    errs: list = []
    moved = asyncio.Event()
    async with connect(a, servers=[b.url], reconnect_wait=0.02, on_reconnect=moved.set, on_error=errs.append) as c, \
            busgate.connect(a.url, token=TOKEN, reconnect_wait=0.5) as watcher:
        await c.publish("jobs.retry", b"job", ack=True)
        sub = await c.subscribe("jobs.retry", durable="retry")
        m = await sub.next(5)
        w = await watcher.subscribe("jobs.retry", durable="retry")  # stays on A: sees what A redelivers
        a.signal(signal.SIGTERM)  # A drains: GOAWAY
        await asyncio.wait_for(moved.wait(), 5)
        assert c.connected_url.endswith(f":{b.port}")
        # the delivery taken before the GOAWAY was not released: it is settled on the old connection
        assert not m.stale and await no_message(w, 0.2)
        assert await m.ack() is True
        assert await no_message(w, 0.8)  # acknowledged: not redelivered after the 500 ms ack wait
        assert not [e for e in errs if isinstance(e, (errors.UnknownDelivery, errors.UnknownSid))]
        # the old connection was closed once its work was settled, well before the GOAWAY delay
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, a.proc.wait, 5) == 0


@pytest.mark.parametrize("transport", ["tcp", "ws", "ws-json"])
async def test_durable_round_trip_over_every_transport(gw, transport, request):
    if transport != "tcp":
        request.getfixturevalue("require_ws")
    u, kw = (gw.url, {}) if transport == "tcp" else (gw.ws_url, {"ws_json": transport == "ws-json"})
    async with busgate.connect(u, token=TOKEN, **kw) as c:
        await c.publish("jobs.retry", b"\xff\x00 binary", ack=True, msg_id="t-1")
        await c.publish("jobs.retry", b"\xff\x00 binary", ack=True, msg_id="t-1")
        sub = await c.subscribe("jobs.retry", durable="retry")
        m = await sub.next(5)
        assert (m.data, m.attempt) == (b"\xff\x00 binary", 1) and m.delivery_id >= 1
        assert await m.in_progress() and await m.nak(delay=0.01)
        m2 = await sub.next(5)
        assert m2.attempt == 2 and m2.delivery_id > m.delivery_id
        assert await m2.ack()
        assert await no_message(sub, 0.7)


def test_sync_facade_durable(gw):
    with sync_connect(gw.url, token=TOKEN) as bg:
        bg.publish("jobs.retry", b"a", ack=True, msg_id="s-1")
        bg.publish("jobs.retry", b"a", ack=True, msg_id="s-1")
        sub = bg.subscribe("jobs.retry", durable="retry", max_inflight=2)
        m = sub.next(timeout=5)
        assert (m.data, m.attempt, m.settled) == (b"a", 1, False) and m.delivery_id
        assert m.in_progress() is True
        assert m.nak(delay=0.05) is True
        m2 = sub.next(timeout=5)
        assert m2.attempt == 2 and m2.ack() is True and sub.unsettled == 0
        with pytest.raises(errors.Timeout):
            sub.next(timeout=0.6)


# ---------------------------------------------------------------- busgate-cli

def run_cli(url, *args, timeout=20):
    return subprocess.run([*CLI, "--url", url, "--token", TOKEN, *args], capture_output=True, text=True,
                          timeout=timeout, env=python_env())


async def test_cli_pub_with_ack_and_msg_id_and_durable_sub(gw):
    loop = asyncio.get_running_loop()

    def cli(*args):
        return loop.run_in_executor(None, lambda: run_cli(gw.url, *args))

    for data, extra in (("one", ["--msg-id", "cli-1"]), ("one", ["--msg-id", "cli-1"]), ("two", [])):
        r = await cli("pub", "jobs.api.cli", data, "--ack", *extra)
        assert r.returncode == 0, r.stderr
        assert "(stored)" in r.stderr
    # --no-ack: a peek; what it held is released when it exits and comes back as attempt 2
    r = await cli("sub", "jobs.api.>", "--durable", "api", "--no-ack", "--count", "1")
    assert r.returncode == 0, r.stderr
    assert "Subscribed to 'jobs.api.>' as durable 'api'" in r.stderr
    assert '(delivery 1, attempt 1)' in r.stdout and "one" in r.stdout
    r = await cli("sub", "jobs.api.>", "--durable", "api", "--count", "2", "--json", "--max-inflight", "2")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["data"], x["attempt"]) for x in rows] == [("one", 2), ("two", 1)]
    assert all(type(x["delivery_id"]) is int and x["delivery_id"] > 0 for x in rows)
    async with connect(gw) as c:  # acknowledged by the CLI: nothing is left
        sub = await c.subscribe("jobs.api.>", durable="api", max_inflight=5)
        assert await no_message(sub, 0.5)


async def test_cli_not_stored_exits_non_zero_and_term_dead_letters(gw):
    loop = asyncio.get_running_loop()

    def cli(*args):
        return loop.run_in_executor(None, lambda: run_cli(gw.url, *args))

    for i in range(2):
        assert (await cli("pub", "small.x", str(i), "--ack")).returncode == 0
    r = await cli("pub", "small.x", "3", "--ack")
    assert r.returncode == 1 and "NOT_STORED (504)" in r.stderr
    async with connect(gw) as c:
        dead = await c.subscribe("deadletter.retry")
        await c.publish("jobs.retry", b"bad job", ack=True)
        r = await cli("sub", "jobs.retry", "--durable", "retry", "--term", "--reason", "rejected by hand",
                      "--count", "1")
        assert r.returncode == 0, r.stderr
        d = await dead.next(5)
        assert d.data == b"bad job" and d.headers["busgate-dead-reason"] == "terminated: rejected by hand"
    r = await cli("sub", "jobs.retry", "--nak")  # settling flags need --durable: a usage error
    assert r.returncode == 2
