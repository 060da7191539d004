"""Scenarios that need logic: counting, timing, threads, several connections in loops, the drain.
They use the same Context as the scenario files and register with the same id scheme."""
from __future__ import annotations

import subprocess
import threading
import time

from . import codec
from .codec import ERR, GOAWAY, MSG, OK, PING, PONG, PUB, REQ, RES, UNSUB
from .engine import NON_STRICT, OK_, FAILED, UNIMPLEMENTED, Context, Fail, Unimplemented
from .registry import multi, scenario
from .transport import OP_BIN, OP_CLOSE, OP_PING, Closed, WsRefused, WsTransport

A = {"busgate-tenant": "acme"}


def msgs(ctx: Context, c, quiet=0.3) -> list:
    return [f.fields for f in c.collect(quiet, MSG)]


# ------------------------------------------------------------------------------------------------
# 5. Queue groups

@scenario("5.1.1", "each message goes to exactly one member of a queue group; a plain subscriber gets every one",
          "30 messages: members m1+m2 receive 30 in all with no duplicate; the plain subscriber receives 30", "10")
def queue_once(ctx: Context):
    m1, m2, plain = ctx.connect("m1"), ctx.connect("m2"), ctx.connect("plain")
    ctx.sub(m1, 1, "qg.work", "workers")
    ctx.sub(m2, 1, "qg.work", "workers")
    ctx.sub(plain, 1, "qg.work")
    p = ctx.connect("p")
    for i in range(30):
        p.send([PUB, "qg.work", str(i).encode()])
    ctx.alive(p)
    got1, got2, gotp = msgs(ctx, m1), msgs(ctx, m2), msgs(ctx, plain)
    members = sorted(int(f[3]) for f in got1 + got2)
    if members != list(range(30)):
        ctx.fail(f"members received {len(members)} messages ({len(got1)} + {len(got2)}); expected each of 30 once")
    if sorted(int(f[3]) for f in gotp) != list(range(30)):
        ctx.fail(f"the plain subscriber received {len(gotp)} of 30")
    if not got1 or not got2:
        ctx.non_strict(f"one member got every message ({len(got1)}/{len(got2)}); allowed (choice is unspecified)")


@scenario("5.1.2", "a message matching two queue groups goes to one member of each",
          "groups g1 and g2 on one subject each receive all 20 messages once", "10")
def queue_two_groups(ctx: Context):
    a1, a2, b1, b2 = (ctx.connect(n) for n in ("a1", "a2", "b1", "b2"))
    for c, q in ((a1, "g1"), (a2, "g1"), (b1, "g2"), (b2, "g2")):
        ctx.sub(c, 1, "qg.two", q)
    p = ctx.connect("p")
    for i in range(20):
        p.send([PUB, "qg.two", str(i).encode()])
    ctx.alive(p)
    for name, cs in (("g1", (a1, a2)), ("g2", (b1, b2))):
        got = sorted(int(f[3]) for c in cs for f in msgs(ctx, c, 0.2))
        if got != list(range(20)):
            ctx.fail(f"group {name} received {len(got)} messages, expected each of 20 once")


@scenario("5.1.3", "the same queue name on different subjects forms one group",
          "members on qg.s.* and qg.s.x (queue w): each message to qg.s.x reaches exactly one of them", "10")
def queue_by_subject(ctx: Context):
    a, b = ctx.connect("a"), ctx.connect("b")
    ctx.sub(a, 1, "qg.s.*", "w")
    ctx.sub(b, 1, "qg.s.x", "w")
    p = ctx.connect("p")
    for i in range(20):
        p.send([PUB, "qg.s.x", str(i).encode()])
    ctx.alive(p)
    got = sorted(int(f[3]) for c in (a, b) for f in msgs(ctx, c, 0.2))
    if got != list(range(20)):
        ctx.fail(f"the group received {len(got)} messages, expected each of 20 exactly once")


@scenario("5.1.4", "a member that unsubscribes leaves the group",
          "after m2's UNSUB, m1 receives all 10 messages", "7.5, 10")
def queue_unsub(ctx: Context):
    m1, m2 = ctx.connect("m1"), ctx.connect("m2")
    ctx.sub(m1, 1, "qg.leave", "w")
    ctx.sub(m2, 1, "qg.leave", "w")
    m2.send([UNSUB, 1])
    ctx.alive(m2)
    p = ctx.connect("p")
    for i in range(10):
        p.send([PUB, "qg.leave", str(i).encode()])
    ctx.alive(p)
    got = msgs(ctx, m1)
    if len(got) != 10:
        ctx.fail(f"m1 received {len(got)} of 10")
    ctx.expect_nothing(m2, 50)


@scenario("5.1.5", "a member whose connection closes leaves the group",
          "after m2 disconnects, m1 receives all 10 messages", "10")
def queue_close(ctx: Context):
    m1, m2 = ctx.connect("m1"), ctx.connect("m2")
    ctx.sub(m1, 1, "qg.gone", "w")
    ctx.sub(m2, 1, "qg.gone", "w")
    ctx.conns.pop("m2").close()
    time.sleep(0.2)
    p = ctx.connect("p")
    for i in range(10):
        p.send([PUB, "qg.gone", str(i).encode()])
    ctx.alive(p)
    got = msgs(ctx, m1)
    if len(got) != 10:
        ctx.fail(f"m1 received {len(got)} of 10 (messages were given to a closed member)")


@scenario("5.1.6", "two members of one group on one connection",
          "each of 10 messages arrives once, on one of the two sids", "10")
def queue_same_conn(ctx: Context):
    c = ctx.connect("c")
    ctx.sub(c, 1, "qg.one", "w")
    ctx.sub(c, 2, "qg.one", "w")
    for i in range(10):
        c.send([PUB, "qg.one", str(i).encode()])
    ctx.alive(c)
    got = msgs(ctx, c)
    if sorted(int(f[3]) for f in got) != list(range(10)):
        ctx.fail(f"received {[(f[1], f[3]) for f in got]}; expected each of 10 once")


@scenario("5.1.7", "a queue group on a wildcard subject", "each of 10 messages on qg.w.<n> goes to one member", "10")
def queue_wildcard(ctx: Context):
    m1, m2 = ctx.connect("m1"), ctx.connect("m2")
    ctx.sub(m1, 1, "qg.w.*", "w")
    ctx.sub(m2, 1, "qg.w.*", "w")
    p = ctx.connect("p")
    for i in range(10):
        p.send([PUB, f"qg.w.{i}", b"m"])
    ctx.alive(p)
    got = sorted(f[2] for c in (m1, m2) for f in msgs(ctx, c, 0.2))
    if got != sorted(f"qg.w.{i}" for i in range(10)):
        ctx.fail(f"members received {got}")


@scenario("5.1.8", "queue-group responders: a request is served by one member",
          "exactly one member gets the request MSG; the requester gets one RES", "10, 12")
def queue_request(ctx: Context):
    r1, r2 = ctx.connect("r1"), ctx.connect("r2")
    ctx.sub(r1, 1, "qg.svc", "svc")
    ctx.sub(r2, 1, "qg.svc", "svc")
    a = ctx.connect("a")
    a.send([REQ, 1, "qg.svc", b"q", None, 1500])
    got = [(c, f) for c in (r1, r2) for f in msgs(ctx, c, 0.25)]
    if len(got) != 1:
        ctx.fail(f"{len(got)} members received the request")
    c, f = got[0]
    c.send([PUB, f[5], b"served"])
    ctx.expect_res(a, 1, 0, "served")
    ctx.expect_nothing(a, 100)


# ------------------------------------------------------------------------------------------------
# 10. Limits and quotas

def _refill():
    time.sleep(1.05)  # token buckets hold one second's worth: start every rate case with a full one


def _acks(ctx: Context, c, n: int) -> tuple[list, list]:
    oks, errs = [], []
    for _ in range(n):
        f = ctx._next(c, 3, "OK or ERR for each acked PUB")
        if f.op == OK:
            oks.append(f.fields[2])
        elif f.op == ERR:
            errs.append(f)
        else:
            ctx.fail(f"unexpected {f!r}")
    return oks, errs


@scenario("10.3.1", "publish rate per tenant (20 msgs/s): a burst of 40 acked PUBs",
          "about 20 OK, the rest ERR RATE_LIMITED (ref_op 3, ref_id = ack); dropped messages are not delivered; "
          "after a second the tenant may publish again", "15")
def rate_msgs(ctx: Context):
    _refill()
    spy = ctx.connect("spy", "ratelimit")
    ctx.sub(spy, 1, "rl.x")
    c = ctx.connect("c", "ratelimit")
    for i in range(1, 41):
        c.send([PUB, "rl.x", b"x", None, None, i])
    oks, errs = _acks(ctx, c, 40)
    for e in errs:
        if codec.name_of(e.fields[1]) != "RATE_LIMITED":
            ctx.fail(f"expected RATE_LIMITED, got {e!r}")
        if e.fields[3:5] != [PUB, e.fields[4]] or e.fields[4] in oks:
            ctx.fail(f"RATE_LIMITED does not reference its PUB: {e!r}")
    if not errs:
        ctx.fail("40 PUBs in a burst at 20 msgs/s: none was RATE_LIMITED")
    if not 10 <= len(oks) <= 30:
        ctx.fail(f"{len(oks)} of 40 accepted in a burst at 20 msgs/s")
    got = msgs(ctx, spy, 0.3)
    if len(got) != len(oks):
        ctx.fail(f"{len(got)} messages delivered, {len(oks)} accepted: dropped messages must not be delivered")
    time.sleep(1.0)
    c.send([PUB, "rl.x", b"x", None, None, 99])
    ctx.expect(c, [OK, PUB, 99])


@scenario("10.3.2", "the publish rate is shared by the tenant's connections",
          "two connections bursting 20 acked PUBs each: about 20 accepted in all", "15")
def rate_shared(ctx: Context):
    _refill()
    c1, c2 = ctx.connect("c1", "ratelimit"), ctx.connect("c2", "ratelimit")
    for i in range(1, 21):
        c1.send([PUB, "rl.y", b"x", None, None, i])
        c2.send([PUB, "rl.y", b"x", None, None, i])
    o1, e1 = _acks(ctx, c1, 20)
    o2, e2 = _acks(ctx, c2, 20)
    total = len(o1) + len(o2)
    if not 10 <= total <= 30:
        ctx.fail(f"{total} of 40 accepted across two connections at 20 msgs/s per tenant")
    if any(codec.name_of(e.fields[1]) != "RATE_LIMITED" for e in e1 + e2):
        ctx.fail(f"unexpected errors: {e1 + e2!r}")


@scenario("10.3.3", "payload bytes per second per tenant (2000 B/s): ten 500-byte PUBs at once",
          "about four accepted, the rest ERR RATE_LIMITED", "15")
def rate_bytes(ctx: Context):
    _refill()
    c = ctx.connect("c", "byterate")
    for i in range(1, 11):
        c.send([PUB, "br.x", b"b" * 500, None, None, i])
    oks, errs = _acks(ctx, c, 10)
    if not 2 <= len(oks) <= 6:
        ctx.fail(f"{len(oks)} of ten 500-byte PUBs accepted at 2000 B/s")
    if any(codec.name_of(e.fields[1]) != "RATE_LIMITED" or e.fields[3] != PUB for e in errs):
        ctx.fail(f"unexpected errors: {errs!r}")


@scenario("10.3.4", "REQs are not rate-limited", "25 REQs in a burst on the 20 msgs/s tenant: 25 RES NO_RESPONDERS, "
          "none RATE_LIMITED", "15")
def rate_not_req(ctx: Context):
    c = ctx.connect("c", "ratelimit")
    for i in range(1, 26):
        c.send([REQ, i, "rl.svc", b"q"])
    for i in range(25):
        f = ctx._next(c, 3, "RES")
        if f.op != RES or codec.name_of(f.fields[2]) != "NO_RESPONDERS":
            ctx.fail(f"expected RES NO_RESPONDERS, got {f!r}")


@scenario("10.4.1", "concurrent REQs per tenant (max_inflight 2), across connections",
          "the third REQ in flight gets RES TOO_MANY_REQUESTS at once; answering one frees a slot", "12.2, 15")
def inflight(ctx: Context):
    r = ctx.connect("r", "inflight")
    ctx.sub(r, 1, "if.svc")
    a, b = ctx.connect("a", "inflight"), ctx.connect("b", "inflight")
    if a.welcome.fields[5].get("max_inflight") != 2:
        ctx.fail(f"WELCOME max_inflight is {a.welcome.fields[5].get('max_inflight')}, the tenant's limit is 2")
    a.send([REQ, 1, "if.svc", b"1", None, 1500])
    b.send([REQ, 1, "if.svc", b"2", None, 1500])
    held = [ctx.expect(r, [MSG, 1, "if.svc", "$any", "$any", {"$type": "str"}]) for _ in range(2)]
    t0 = time.monotonic()
    b.send([REQ, 2, "if.svc", b"3", None, 1500])
    ctx.expect_res(b, 2, "TOO_MANY_REQUESTS", timeout_ms=1000)
    if time.monotonic() - t0 > 0.5:
        ctx.fail("TOO_MANY_REQUESTS was not immediate")
    first = held[0]
    r.send([PUB, first.fields[5], b"done"])
    who = a if first.fields[3] == b"1" else b
    ctx.expect_res(who, 1, 0, "done")
    b.send([REQ, 3, "if.svc", b"4", None, 1500])
    ctx.expect(r, [MSG, 1, "if.svc", "4", "$any", "$any"])


@scenario("10.5.1", "connections per tenant (max_connections 2)",
          "the third HELLO gets ERR TOO_MANY_CONNECTIONS (ref_op 1) and the close; after one closes a new one is "
          "accepted", "6.2, 15")
def connlimit(ctx: Context):
    ctx.connect("c1", "connlimit")
    ctx.connect("c2", "connlimit")
    c3 = ctx.open("c3")
    c3.send([codec.HELLO, [1], {"method": "token", "token": ctx.token("connlimit")}])
    ctx.expect_err(c3, "TOO_MANY_CONNECTIONS", ref_op=1)
    ctx.conns.pop("c1").close()
    deadline = time.monotonic() + 2
    while True:
        c4 = ctx.open("c4")
        c4.send([codec.HELLO, [1], {"method": "token", "token": ctx.token("connlimit")}])
        f = ctx._next(c4, 2, "WELCOME")
        if f.op == codec.WELCOME:
            return
        if time.monotonic() > deadline:
            ctx.fail(f"a connection slot was not freed 2 s after a close: {f!r}")
        time.sleep(0.1)


# ------------------------------------------------------------------------------------------------
# 11. Slow consumers and flow control

@multi([("11.1.1", "a stalled consumer is warned first", "ERR SLOW_CONSUMER_WARNING (no ref_op, not fatal) when its "
         "outbound queue passes half of max_pending", "15"),
        ("11.1.2", "a stalled consumer is cut off", "ERR SLOW_CONSUMER as its last frame, then the close", "15"),
        ("11.1.3", "a slow consumer never slows a healthy one", "a healthy subscriber of the same subject receives "
         "every message, and is never warned", "15")])
def slow_consumer(ctx: Context, results: dict):
    stalled = ctx.connect("stalled", rcvbuf=4096)
    ctx.sub(stalled, 1, "sc.feed")
    fast = ctx.connect("fast")
    ctx.sub(fast, 1, "sc.feed")
    pub = ctx.connect("pub")
    max_pending = stalled.welcome.fields[5]["max_pending"]
    payload = b"x" * 65536
    n = min(2000, (2 * max_pending + 16 * 1024 * 1024) // len(payload))
    received, errors = [], []
    done = threading.Event()

    def reader():
        try:
            while len(received) < n:
                f = fast.next(10)
                if f.op == MSG:
                    received.append(1)
                elif f.op == ERR:
                    errors.append(f)
        except Exception as e:  # noqa: BLE001
            errors.append(e)
        done.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    for i in range(n):
        pub.send([PUB, "sc.feed", payload])
        while i - len(received) > 8 and not done.is_set():
            time.sleep(0.002)
    ctx.alive(pub)
    t.join(30)
    if len(received) == n and not errors:
        results["11.1.3"] = (OK_, "")
    else:
        results["11.1.3"] = (FAILED, f"healthy consumer received {len(received)} of {n}; errors {errors!r:.300}")
    codes, frames, closed = [], 0, None
    try:
        while True:
            f = stalled.next(5)
            frames += 1
            if f.op == ERR:
                codes.append(f)
    except Closed as e:
        closed = e
    except TimeoutError:
        pass
    names = [codec.name_of(f.fields[1]) for f in codes]
    warn = [f for f in codes if codec.name_of(f.fields[1]) == "SLOW_CONSUMER_WARNING"]
    if warn and len(warn[0].fields) <= 3:
        results["11.1.1"] = (OK_, "")
    elif warn:
        results["11.1.1"] = (NON_STRICT, f"SLOW_CONSUMER_WARNING carries a reference: {warn[0]!r}")
    else:
        results["11.1.1"] = (FAILED, f"no SLOW_CONSUMER_WARNING among the stalled client's {frames} frames "
                                     f"(errors {names})")
    if names and names[-1] == "SLOW_CONSUMER" and closed is not None:
        results["11.1.2"] = (OK_, "")
    else:
        results["11.1.2"] = (FAILED, f"stalled client: errors {names}, closed={closed is not None} "
                                     f"after {frames} frames; expected SLOW_CONSUMER last, then the close")


# Durable consumption helpers (section 16), shared by groups 11 and 17.

MAX_DELIVERY_ID = 2**53 - 1


def consumer(ctx: Context, name: str, tenant: str = "acme") -> dict:
    """A declared consumer's settings as the profile states them (durable.consumers)."""
    try:
        return ctx.opts.profile["durable"]["consumers"][tenant][name]
    except KeyError:
        raise Fail(f"the profile declares no consumer {name!r} for tenant {tenant!r} (durable.consumers)") from None


def dsub(ctx: Context, c, sid: int, name: str, subject: str | None = None, tenant: str = "acme", **opts):
    """A durable SUB on consumer `name` (its declared filter unless `subject` is given) and its OK."""
    ctx.require_durable()
    subject = subject or consumer(ctx, name, tenant)["subject"]
    ctx.sub(c, sid, subject, None, {"durable": name, **opts})


def durable_msg(ctx: Context, f, sid: int):
    """Check that a frame is a MSG on durable sid `sid` carrying delivery_id and attempt (16.2);
    returns (payload, delivery_id, attempt, normalized fields)."""
    if f.op != MSG or f.fields[1] != sid:
        ctx.fail(f"expected a MSG on durable sid {sid}, got {f!r}")
    n = codec.normalize(f.fields)
    did = n[6] if len(n) > 6 else None
    att = n[7] if len(n) > 7 else None
    if not isinstance(did, int) or not 1 <= did <= MAX_DELIVERY_ID:
        ctx.fail(f"a MSG on a durable subscription must carry delivery_id, 1 to 2^53-1 (16.2): {f!r}")
    if not isinstance(att, int) or att < 1:
        ctx.fail(f"a MSG on a durable subscription must carry attempt >= 1 (16.2): {f!r}")
    return f.fields[3], did, att, n


def next_durable(ctx: Context, c, sid: int, timeout_ms: float, what: str):
    f = ctx._next(c, ctx.t(timeout_ms), what)
    return durable_msg(ctx, f, sid)


def durable_msgs(ctx: Context, c, sid: int, quiet: float = 0.3) -> list:
    """Every MSG until the connection is quiet (others stay queued), each checked as a durable one."""
    return [durable_msg(ctx, f, sid) for f in c.collect(quiet * ctx.opts.scale, MSG)]


def stored_pub(ctx: Context, p, subject: str, payloads: list[bytes], headers: dict | None = None):
    """Publish each payload with an ack id and wait for every OK: the messages are stored (16.5)."""
    for i, data in enumerate(payloads, 1):
        p.send([PUB, subject, data, headers, None, i])
    ctx.expect_set(p, [[OK, PUB, i] for i in range(1, len(payloads) + 1)])


@scenario("11.2.1", "credit flow control: a \"flow\": \"credit\" subscription delivers only against CREDIT",
          "durable subscription with flow credit on 5 stored messages: no MSG before CREDIT; after CREDIT 2, exactly "
          "2", "16.4")
def credit(ctx: Context):
    ctx.require_durable()
    p = ctx.connect("p")
    stored_pub(ctx, p, "fc.credit", [f"{i}-{ctx.nonce}".encode() for i in range(5)])
    c = ctx.connect("c")
    dsub(ctx, c, 1, "fc-credit", flow="credit")
    ctx.expect_nothing(c, 300)
    c.send([codec.CREDIT, 1, 2])
    got = durable_msgs(ctx, c, 1, 0.4)
    if len(got) != 2:
        ctx.fail(f"{len(got)} MSGs after CREDIT 2")
    c.send([codec.CREDIT, 1, 3])  # take the rest so the stream is left empty
    got += durable_msgs(ctx, c, 1, 0.4)
    for _, did, _, _ in got:
        c.send([codec.ACK, 1, did])
    ctx.alive(c)


@scenario("11.2.2", "explicit acks: MSGs carry delivery ids from 1, ACK is silent",
          "durable subscription: MSG with delivery_id 1 and attempt 1; ACK answered by nothing", "16.2, 16.3")
def explicit_ack(ctx: Context):
    ctx.require_durable()
    c = ctx.connect("c")
    dsub(ctx, c, 1, "fc-ack", ack="explicit")
    c.send([PUB, "fc.ack", b"m"])
    f = ctx.expect(c, [MSG, 1, "fc.ack", "m", {"busgate-tenant": "acme"}, None, 1, 1])
    c.send([codec.ACK, 1, f.fields[6]])
    ctx.alive(c)
    ctx.expect_nothing(c, 100)


@scenario("11.2.3", "max_inflight on a subscription bounds unacknowledged deliveries",
          "durable subscription with max_inflight 2 on 4 stored messages: 2 MSGs until one is ACKed, then one more",
          "16.2")
def sub_max_inflight(ctx: Context):
    ctx.require_durable()
    p = ctx.connect("p")
    stored_pub(ctx, p, "fc.mi", [f"{i}-{ctx.nonce}".encode() for i in range(4)])
    c = ctx.connect("c")
    dsub(ctx, c, 1, "fc-mi", ack="explicit", max_inflight=2)
    got = durable_msgs(ctx, c, 1, 0.4)
    if len(got) != 2:
        ctx.fail(f"{len(got)} unacknowledged MSGs with max_inflight 2")
    c.send([codec.ACK, 1, got[0][1]])
    more = durable_msgs(ctx, c, 1, 0.4)
    if len(more) != 1:
        ctx.fail(f"{len(more)} MSGs after one ACK")
    for m in got[1:] + more:
        c.send([codec.ACK, 1, m[1]])
    last = durable_msgs(ctx, c, 1, 0.4)
    for m in last:
        c.send([codec.ACK, 1, m[1]])
    ctx.alive(c)


# ------------------------------------------------------------------------------------------------
# 13. Heartbeats

@scenario("13.2.2", "a client that answers PINGs stays connected",
          "heartbeat 200 ms: over 1.2 s the gateway sends PINGs, the client answers, the connection stays open", "13")
def pings_answered(ctx: Context):
    c = ctx.connect("c", opts={"heartbeat_ms": 200})
    ctx.expect_nothing(c, 1200)
    if c.pings < 2:
        ctx.fail(f"{c.pings} PINGs in 1.2 s of silence with heartbeat_ms 200")
    ctx.alive(c)


@scenario("13.2.3", "any frame from the client counts as activity, not only PONG",
          "heartbeat 200 ms, client sends a PUB every 80 ms for 1.2 s and never a PONG: no IDLE_TIMEOUT", "13")
def any_frame_counts(ctx: Context):
    c = ctx.connect("c", opts={"heartbeat_ms": 200})
    c.auto_pong = False
    end = time.monotonic() + 1.2
    pings = 0
    while time.monotonic() < end:
        c.send([PUB, "hb.busy", b"x"])
        try:
            f = c.next(0.08)
            if f.op == PING:
                pings += 1
            else:
                ctx.fail(f"unexpected {f!r}")
        except TimeoutError:
            pass
        except Closed as e:
            ctx.fail(f"closed while the client kept sending frames: {e}")
    if pings:
        ctx.non_strict(f"{pings} PING(s) although the client sent a frame every 80 ms (section 13: PING only "
                       f"after heartbeat_ms without a frame)")
    c.auto_pong = True
    ctx.alive(c)


# ------------------------------------------------------------------------------------------------
# 14. GOAWAY and drain (opt-in: --allow-drain CMD)

DRAIN_CASES = [
    ("14.1.1", "GOAWAY reaches every open connection", "GOAWAY [13, delay_ms > 0, reason str, (servers)] on each "
     "connection, once", "14, 7.12"),
    ("14.1.2", "frames are still processed during the delay", "PUB with ack gets OK, the subscriber gets the MSG, "
     "PING gets PONG after GOAWAY", "14"),
    ("14.1.3", "a request answered during the delay", "RES status 0 for a REQ in flight when GOAWAY was sent", "14"),
    ("14.1.4", "requests still in flight at delay_ms", "RES SHUTTING_DOWN at about delay_ms, before the fatal ERR",
     "14"),
    ("14.1.5", "the end of the delay", "ERR SHUTTING_DOWN (fatal) as the last frame, then the close, no earlier "
     "than delay_ms after GOAWAY", "14, 17"),
    ("14.1.6", "no new connection is accepted while draining", "connect refused, or closed (ERR SHUTTING_DOWN) "
     "before WELCOME", "14"),
    ("14.1.7", "a WebSocket connection at the end of the drain", "GOAWAY, ERR SHUTTING_DOWN, then Close 1001",
     "2.4, 14"),
]


@multi(DRAIN_CASES, last=True)
def drain(ctx: Context, results: dict):
    cmd = ctx.opts.allow_drain
    if not cmd:
        raise Unimplemented("the runner may not trigger a drain: pass --allow-drain CMD (e.g. 'kill -TERM PID')")
    idle = ctx.connect("idle")
    sub = ctx.connect("sub")
    ctx.sub(sub, 1, "dr.feed")
    pub = ctx.connect("pub")
    r = ctx.connect("r")
    ctx.sub(r, 1, "dr.svc")
    q = ctx.connect("q")
    q.send([REQ, 1, "dr.svc", b"answer-me", None, 5000])
    m1 = ctx.expect(r, [MSG, 1, "dr.svc", "answer-me", "$any", {"$type": "str"}])
    q.send([REQ, 2, "dr.svc", b"leave-me", None, 5000])
    ctx.expect(r, [MSG, 1, "dr.svc", "leave-me", "$any", {"$type": "str"}])
    ws = None
    try:
        ws = ctx.connect("ws", transport="ws")
    except Unimplemented as e:
        results["14.1.7"] = (UNIMPLEMENTED, str(e))
    subprocess.run(cmd, shell=True, check=False)
    t_goaway = {}
    goaways = {}
    for name in ("idle", "sub", "pub", "r", "q") + (("ws",) if ws else ()):
        c = ctx.conn(name)
        try:
            f = ctx.expect(c, [GOAWAY, {"$type": "uint"}, {"$type": "str"}, "$..."], 3000)
            goaways[name] = f
            t_goaway[name] = time.monotonic()
        except Fail as e:
            results["14.1.1"] = (FAILED, str(e))
            raise
    delay = goaways["q"].fields[1]
    if delay == 0 or any(f.fields[1] != delay for f in goaways.values()):
        results["14.1.1"] = (NON_STRICT, f"GOAWAY delays {[f.fields[1] for f in goaways.values()]}")
    # 14.1.2: the connection keeps working
    try:
        pub.send([PUB, "dr.feed", b"during", None, None, 5])
        ctx.expect(pub, [OK, PUB, 5])
        ctx.expect(sub, [MSG, 1, "dr.feed", "during", "$any"])
        ctx.alive(idle, "GOAWAY")
        results["14.1.2"] = (OK_, "")
    except (Fail, Unimplemented) as e:
        results["14.1.2"] = (FAILED, str(e))
    # 14.1.6: new connections are refused
    try:
        c = ctx.open("late")
        c.send([codec.HELLO, [1], {"method": "token", "token": ctx.token("acme")}])
        f = c.next(2)
        if f.op == codec.WELCOME:
            results["14.1.6"] = (FAILED, "a new connection got WELCOME while the gateway was draining")
        elif f.op == ERR:
            results["14.1.6"] = (OK_, "") if codec.name_of(f.fields[1]) == "SHUTTING_DOWN" else \
                (NON_STRICT, f"refused with {f!r}")
        else:
            results["14.1.6"] = (FAILED, f"unexpected {f!r}")
    except Fail as e:
        results["14.1.6"] = (OK_, "") if "cannot connect" in str(e) else (FAILED, str(e))
    except (Closed, TimeoutError) as e:
        results["14.1.6"] = (OK_, "") if isinstance(e, Closed) else (FAILED, "no answer to HELLO while draining")
    # 14.1.3: answered in the delay
    try:
        r.send([PUB, m1.fields[5], b"answered"])
        ctx.expect_res(q, 1, 0, "answered")
        results["14.1.3"] = (OK_, "")
    except (Fail, Unimplemented) as e:
        results["14.1.3"] = (FAILED, str(e))
    # 14.1.4 and 14.1.5
    try:
        res = ctx.expect_res(q, 2, "SHUTTING_DOWN", timeout_ms=delay + 3000)
        dt = (time.monotonic() - t_goaway["q"]) * 1000
        results["14.1.4"] = (OK_, "") if dt >= 0.8 * delay else \
            (FAILED, f"RES SHUTTING_DOWN {dt:.0f} ms after GOAWAY, before delay_ms {delay}")
    except (Fail, Unimplemented) as e:
        results["14.1.4"] = (FAILED, str(e))
    try:
        ctx.expect_err(q, "SHUTTING_DOWN", timeout_ms=delay + 3000)
        dt = (time.monotonic() - t_goaway["q"]) * 1000
        ctx.expect_err(idle, "SHUTTING_DOWN", timeout_ms=3000)
        if dt < 0.8 * delay:
            results["14.1.5"] = (FAILED, f"closed {dt:.0f} ms after GOAWAY, before delay_ms {delay}")
        else:
            results["14.1.5"] = (NON_STRICT, "; ".join(ctx.notes)) if ctx.notes else (OK_, "")
    except (Fail, Unimplemented) as e:
        results["14.1.5"] = (FAILED, str(e))
    if ws:
        notes = len(ctx.notes)
        try:
            ctx.expect_err(ws, "SHUTTING_DOWN", timeout_ms=3000, ws_close=1001)
            results["14.1.7"] = (NON_STRICT, "; ".join(ctx.notes[notes:])) if len(ctx.notes) > notes else (OK_, "")
        except (Fail, Unimplemented) as e:
            results["14.1.7"] = (FAILED, str(e))
    results.setdefault("14.1.1", (OK_, ""))


# ------------------------------------------------------------------------------------------------
# 15. WebSocket: upgrade negotiation and control frames

def _ws_probe(ctx: Context) -> WsTransport:
    return ctx.open_ws(["busgate.v1"])


@scenario("15.1.2", "the gateway selects the first offered subprotocol it supports (unknown one first)",
          "offer \"x-unknown, busgate.v1\": 101 with Sec-WebSocket-Protocol busgate.v1", "2.4")
def ws_select_known(ctx: Context):
    _ws_probe(ctx).close()
    tr = ctx.open_ws(["x-unknown", "busgate.v1"])
    try:
        if tr.subprotocol != "busgate.v1":
            ctx.fail(f"selected {tr.subprotocol!r}")
    finally:
        tr.close()


@scenario("15.1.3", "with both busgate subprotocols offered, the first one wins",
          "offer \"busgate.v1.json, busgate.v1\": busgate.v1.json is selected and speaks JSON", "2.4")
def ws_select_first(ctx: Context):
    _ws_probe(ctx).close()
    tr = ctx.open_ws(["busgate.v1.json", "busgate.v1"])
    try:
        if tr.subprotocol != "busgate.v1.json":
            ctx.fail(f"selected {tr.subprotocol!r}")
    finally:
        tr.close()


@scenario("15.1.4", "an upgrade offering no busgate subprotocol", "HTTP 400, no upgrade", "2.4")
def ws_no_subprotocol(ctx: Context):
    _ws_probe(ctx).close()
    try:
        tr = WsTransport(ctx.opts.ws_url, ["chat", "superchat"])
    except WsRefused as e:
        if e.status != 400:
            ctx.fail(f"refused with HTTP {e.status}, expected 400")
        return
    tr.close()
    ctx.fail(f"upgraded with subprotocol {tr.subprotocol!r}")


@scenario("15.1.5", "an upgrade without Sec-WebSocket-Protocol", "HTTP 400, no upgrade", "2.4")
def ws_no_header(ctx: Context):
    _ws_probe(ctx).close()
    try:
        tr = WsTransport(ctx.opts.ws_url, None)
    except WsRefused as e:
        if e.status != 400:
            ctx.fail(f"refused with HTTP {e.status}, expected 400")
        return
    tr.close()
    ctx.fail(f"upgraded with subprotocol {tr.subprotocol!r}")


@scenario("15.4.5", "a WebSocket ping control frame", "answered with a pong carrying the same data; not a busgate "
          "frame (no ERR); the connection keeps working", "2.4")
def ws_ping(ctx: Context):
    c = ctx.connect("c", transport="ws")
    c.tr.send_frame(OP_PING, b"are-you-there")
    c.tr.pongs_received = 0
    ctx.alive(c)
    ctx.expect_nothing(c, 100)
    if not getattr(c.tr, "pongs_received", 0):
        ctx.fail("no pong control frame for the ping")


@scenario("15.4.6", "the client closes normally", "the gateway echoes Close 1000", "2.4")
def ws_close_echo(ctx: Context):
    c = ctx.connect("c", transport="ws")
    c.tr.send_close(1000, "bye")
    try:
        while True:
            c.tr.recv_message(3)
    except Closed as e:
        if e.ws_code != 1000:
            ctx.fail(f"close answered with {e.ws_code}, expected 1000")
    except TimeoutError:
        ctx.fail("no Close frame in answer to the client's Close within 3 s")


@scenario("15.3.7", "a WebSocket message above 65535 bytes before WELCOME",
          "ERR FRAME_TOO_LARGE, then Close 1009", "2.4")
def ws_too_large_pre(ctx: Context):
    c = ctx.open("c", "ws")
    c.send_ws(OP_BIN, b"\x93\x01\x91\x01" + b"\xc0" * 65532)
    ctx.expect_err(c, "FRAME_TOO_LARGE")


@scenario("15.3.8", "a WebSocket message above the negotiated max_frame (65535)",
          "ERR FRAME_TOO_LARGE, then Close 1009", "2.4, 6.5")
def ws_too_large_post(ctx: Context):
    c = ctx.connect("c", transport="ws", opts={"max_frame": 65535})
    c.send([PUB, "ws.big", b"x" * 65600])
    ctx.expect_err(c, "FRAME_TOO_LARGE")


@scenario("16.2.16", "a JSON text message above 65535 bytes before WELCOME",
          "ERR FRAME_TOO_LARGE, then Close 1009 (the size is measured on the UTF-8 text)", "2.4, 4")
def wsjson_too_large_pre(ctx: Context):
    c = ctx.open("c", "wsjson")
    c.send_raw(('[1,[1],{"method":"token","token":"' + "t" * 65536 + '"}]').encode())
    ctx.expect_err(c, "FRAME_TOO_LARGE")


# ------------------------------------------------------------------------------------------------
# 17. Durable consumption (section 16): the cases that count, time or use several connections.
# Each uses its own consumer (gateway.yaml, profile.json "durable") and payloads carrying the
# case's nonce, so a case never takes another's messages.

@scenario("17.1.7", "a consumer created by a SUB starts where its deliver option says and remembers what is done",
          "deliver all (default): the message stored before the SUB is delivered; deliver new: only messages stored "
          "after it; after a reconnect the consumer delivers only what was not acknowledged", "16.1, 16.2")
def durable_client_created(ctx: Context):
    subject, n = f"ev.{ctx.nonce}", ctx.nonce
    p = ctx.connect("p")
    stored_pub(ctx, p, subject, [b"old"])
    c = ctx.connect("c")
    dsub(ctx, c, 1, f"ev-all-{n}", subject)
    payload, did, att, _ = next_durable(ctx, c, 1, 3000, "the message stored before the SUB (deliver all)")
    if payload != b"old" or att != 1:
        ctx.fail(f"deliver all: expected 'old' at attempt 1, got {payload!r} attempt {att}")
    c.send([codec.ACK, 1, did])
    dsub(ctx, c, 2, f"ev-new-{n}", subject, deliver="new")
    ctx.expect_nothing(c, 300)
    stored_pub(ctx, p, subject, [b"fresh"])
    got = sorted((f.fields[1], durable_msg(ctx, f, f.fields[1])[0]) for f in c.collect(0.4 * ctx.opts.scale, MSG))
    if got != [(1, b"fresh"), (2, b"fresh")]:
        ctx.fail(f"after a new message each consumer delivers it once; got {got}")
    ctx.conns.pop("c").close()  # 'fresh' is outstanding on both: the close releases it
    stored_pub(ctx, p, subject, [b"later"])
    c2 = ctx.connect("c2")
    dsub(ctx, c2, 1, f"ev-all-{n}", subject)
    got = durable_msgs(ctx, c2, 1, 0.5)
    # 'fresh' was delivered on the closed connection without an ACK: released, it comes back too.
    names = sorted(m[0] for m in got)
    if b"old" in names:
        ctx.fail("the acknowledged message was delivered again after a reconnect")
    if names != [b"fresh", b"later"]:
        ctx.fail(f"after a reconnect the consumer delivered {names}; expected the unacknowledged 'fresh' and 'later'")
    for m in got:
        if m[0] == b"fresh" and m[2] < 2:
            ctx.fail(f"'fresh' was released by the close and redelivered: attempt must be 2 or more, got {m[2]}")
        c2.send([codec.ACK, 1, m[1]])
    ctx.alive(c2)


@scenario("17.2.1", "messages stored before anyone subscribes are delivered in stream order, acked or not",
          "3 PUBs with ack (OK each) and 1 without, then a durable SUB: 4 MSGs in publish order, attempt 1, "
          "increasing delivery ids; ACKed, none comes back after the ack wait", "16.2, 16.5, 16.6")
def durable_stored_first(ctx: Context):
    cons = consumer(ctx, "c-store")
    p = ctx.connect("p")
    bodies = [f"s{i}-{ctx.nonce}".encode() for i in range(1, 5)]
    stored_pub(ctx, p, "dq.store", bodies[:3])
    p.send([PUB, "dq.store", bodies[3]])
    ctx.alive(p)
    w = ctx.connect("w")
    dsub(ctx, w, 1, "c-store")
    got = []
    while len(got) < 4:
        got.append(next_durable(ctx, w, 1, 3000, f"stored message {len(got) + 1} of 4"))
    if [m[0] for m in got] != bodies:
        ctx.fail(f"delivered {[m[0] for m in got]}, expected stream order {bodies}")
    if any(m[2] != 1 for m in got):
        ctx.fail(f"first deliveries must be attempt 1: {[m[2] for m in got]}")
    ids = [m[1] for m in got]
    if any(b <= a for a, b in zip(ids, ids[1:])):
        ctx.fail(f"delivery ids must increase on a subscription: {ids}")
    for did in ids:
        w.send([codec.ACK, 1, did])
    ctx.alive(w)
    ctx.expect_nothing(w, cons["ack_wait_ms"] * 1.5)


def _one_delivery(ctx: Context, name: str, body: bytes, sid: int = 1):
    """Publish one stored message on the consumer's subject and subscribe; returns (w, delivery)."""
    cons = consumer(ctx, name)
    p = ctx.connect("p")
    stored_pub(ctx, p, cons["subject"], [body])
    w = ctx.connect("w")
    dsub(ctx, w, sid, name)
    m = next_durable(ctx, w, sid, 3000, "the stored message")
    if m[0] != body or m[2] != 1:
        ctx.fail(f"expected {body!r} at attempt 1, got {m[0]!r} attempt {m[2]}")
    return w, m


def _timed_redelivery(ctx: Context, w, sid: int, body: bytes, t0: float, earliest_ms: float, latest_ms: float,
                      what: str):
    m = next_durable(ctx, w, sid, latest_ms, what)
    dt = (time.monotonic() - t0) * 1000
    if m[0] != body:
        ctx.fail(f"{what}: got {m[0]!r}")
    if dt < earliest_ms:
        ctx.fail(f"{what}: redelivered {dt:.0f} ms after, before {earliest_ms:.0f} ms")
    return m, dt


@scenario("17.2.2", "NAK with delay_ms redelivers after at least the delay, as the next attempt",
          "NAK delay 600: the message comes back no earlier than 600 ms later, attempt 2, with a new delivery_id; "
          "the NAKed id is no longer outstanding (ACK of it: UNKNOWN_DELIVERY)", "16.3")
def durable_nak_delay(ctx: Context):
    body = f"nak-{ctx.nonce}".encode()
    w, (_, d1, _, _) = _one_delivery(ctx, "c-nak", body)
    t0 = time.monotonic()
    w.send([codec.NAK, 1, d1, 600])
    (_, d2, att, _), dt = _timed_redelivery(ctx, w, 1, body, t0, 600 - 5, 600 + 2500, "the NAKed message")
    if att != 2:
        ctx.fail(f"redelivery after NAK must be attempt 2, got {att}")
    if d2 == d1:
        ctx.fail(f"a redelivery gets a new delivery_id; got {d2} again")
    w.send([codec.ACK, 1, d1])
    ctx.expect_err(w, "UNKNOWN_DELIVERY", ref_op=codec.ACK, ref_id=1)
    w.send([codec.ACK, 1, d2])
    ctx.alive(w)
    ctx.expect_nothing(w, 200)


@scenario("17.2.3", "NAK without a delay, on a consumer without backoff, redelivers at once",
          "attempt 2 arrives well before the ack wait (2000 ms): within 1000 ms of the NAK", "16.3")
def durable_nak_now(ctx: Context):
    body = f"naknow-{ctx.nonce}".encode()
    w, (_, d1, _, _) = _one_delivery(ctx, "c-naknow", body)
    t0 = time.monotonic()
    w.send([codec.NAK, 1, d1])
    (_, d2, att, _), dt = _timed_redelivery(ctx, w, 1, body, t0, 0, 1000, "the NAKed message (at once)")
    if att != 2:
        ctx.fail(f"redelivery after NAK must be attempt 2, got {att}")
    w.send([codec.ACK, 1, d2])
    ctx.alive(w)


@scenario("17.2.4", "NAK without a delay waits the consumer's backoff_ms for that attempt",
          "consumer backoff_ms [800]: attempt 2 arrives no earlier than 800 ms after the NAK", "16.3")
def durable_nak_backoff(ctx: Context):
    cons = consumer(ctx, "c-backoff")
    delay = cons["backoff_ms"][0]
    body = f"backoff-{ctx.nonce}".encode()
    w, (_, d1, _, _) = _one_delivery(ctx, "c-backoff", body)
    t0 = time.monotonic()
    w.send([codec.NAK, 1, d1])
    (_, d2, att, _), dt = _timed_redelivery(ctx, w, 1, body, t0, delay - 5, delay + 2500, "the NAKed message")
    if att != 2:
        ctx.fail(f"redelivery after NAK must be attempt 2, got {att}")
    w.send([codec.ACK, 1, d2])
    ctx.alive(w)


@scenario("17.2.5", "PROGRESS keeps a delivery past its ack wait",
          "ack wait 1000 ms; PROGRESS every 300 ms for 2500 ms: no redelivery; the ACK that follows is silent "
          "(the delivery was still outstanding) and nothing comes back", "16.3")
def durable_progress(ctx: Context):
    cons = consumer(ctx, "c-progress")
    wait = cons["ack_wait_ms"]
    body = f"progress-{ctx.nonce}".encode()
    w, (_, d1, _, _) = _one_delivery(ctx, "c-progress", body)
    end = time.monotonic() + ctx.t(wait * 2.5)
    sent = 0
    while time.monotonic() < end:
        w.send([codec.PROGRESS, 1, d1])
        sent += 1
        ctx.expect_nothing(w, wait * 0.3)
    ctx.alive(w, f"{sent} PROGRESS frames")
    w.send([codec.ACK, 1, d1])
    ctx.alive(w, "the ACK after PROGRESS")
    ctx.expect_nothing(w, wait * 1.5)


@scenario("17.2.6", "a delivery neither acknowledged nor touched within the ack wait is redelivered",
          "ack wait 1000 ms: attempt 2 with a new delivery_id, no earlier than the ack wait; the expired id then "
          "gets UNKNOWN_DELIVERY", "16.3")
def durable_ack_wait(ctx: Context):
    cons = consumer(ctx, "c-ackwait")
    wait = cons["ack_wait_ms"]
    body = f"ackwait-{ctx.nonce}".encode()
    w, (_, d1, _, _) = _one_delivery(ctx, "c-ackwait", body)
    t0 = time.monotonic()
    # Measured from receiving the first MSG, which the gateway sent (and started the ack wait) a
    # little earlier: 100 ms of slack for that transit, so only an early redelivery fails.
    (_, d2, att, _), dt = _timed_redelivery(ctx, w, 1, body, t0, wait - 100, wait + 3000, "the unacknowledged message")
    if att != 2 or d2 == d1:
        ctx.fail(f"redelivery after the ack wait: attempt {att} (expected 2), delivery_id {d2} (first was {d1})")
    w.send([codec.PROGRESS, 1, d1])
    ctx.expect_err(w, "UNKNOWN_DELIVERY", ref_op=codec.PROGRESS, ref_id=1)
    w.send([codec.ACK, 1, d1])
    ctx.expect_err(w, "UNKNOWN_DELIVERY", ref_op=codec.ACK, ref_id=1)
    w.send([codec.ACK, 1, d2])
    ctx.alive(w)
    ctx.expect_nothing(w, wait * 1.2)


@scenario("17.2.9", "a message whose max_deliveries attempts all failed is dead-lettered",
          "consumer max_deliveries 2, dead_letter deadletter.exhausted: NAK attempt 1 and 2; the plain subscriber "
          "of the dead-letter subject gets it with busgate-dead-reason max_deliveries and busgate-attempts 2; no "
          "attempt 3; the dead stream stores it (a durable SUB there receives it)", "16.3")
def durable_max_deliveries(ctx: Context):
    cons = consumer(ctx, "c-maxdel")
    dl_subject = cons["dead_letter"]
    dl = ctx.connect("dl")
    ctx.sub(dl, 9, dl_subject)
    body = f"maxdel-{ctx.nonce}".encode()
    p = ctx.connect("p")
    stored_pub(ctx, p, cons["subject"], [body], {"trace-id": ctx.nonce})
    w = ctx.connect("w")
    dsub(ctx, w, 1, "c-maxdel")
    for attempt in range(1, cons["max_deliveries"] + 1):
        payload, did, att, _ = next_durable(ctx, w, 1, 3000, f"attempt {attempt}")
        if payload != body or att != attempt:
            ctx.fail(f"expected {body!r} attempt {attempt}, got {payload!r} attempt {att}")
        w.send([codec.NAK, 1, did])
    ctx.expect(dl, [MSG, 9, dl_subject, body.decode(), {"$has": {
        "trace-id": ctx.nonce, "busgate-tenant": "acme", "busgate-dead-reason": "max_deliveries",
        "busgate-attempts": str(cons["max_deliveries"]), "busgate-subject": cons["subject"],
        "busgate-stream": cons["stream"], "busgate-consumer": "c-maxdel"}}], 3000)
    ctx.expect_nothing(w, 1000)
    # The dead stream (deadletter.>) stores dead letters: a consumer created there delivers it.
    r = ctx.connect("r")
    dsub(ctx, r, 1, f"dl-{ctx.nonce}", dl_subject)
    got = durable_msgs(ctx, r, 1, 0.5)
    for m in got:
        r.send([codec.ACK, 1, m[1]])
    mine = [m for m in got if m[0] == body]
    if len(mine) != 1:
        ctx.fail(f"the dead-letter stream should hold the dead letter once; a consumer on {dl_subject} delivered "
                 f"{[m[0] for m in got]}")
    hdrs = mine[0][3][4] or {}
    if hdrs.get("busgate-dead-reason") != "max_deliveries":
        ctx.fail(f"the stored dead letter lost its headers: {hdrs}")


@scenario("17.3.1", "a closed connection releases its deliveries for immediate redelivery to another connection",
          "consumer max_inflight 1, ack wait 2000 ms: B gets nothing while A holds the message; A closes; B gets it "
          "as attempt 2 within 1000 ms", "16.3")
def durable_release_close(ctx: Context):
    body = f"release-{ctx.nonce}".encode()
    a, (_, d1, _, _) = _one_delivery(ctx, "c-release", body)
    b = ctx.connect("b")
    dsub(ctx, b, 1, "c-release")
    ctx.expect_nothing(b, 300)
    t0 = time.monotonic()
    ctx.conns.pop("w").close()
    (_, d2, att, _), dt = _timed_redelivery(ctx, b, 1, body, t0, 0, 1000, "the released message")
    if att != 2:
        ctx.fail(f"a release counts as an attempt: expected attempt 2, got {att}")
    b.send([codec.ACK, 1, d2])
    ctx.alive(b)
    ctx.expect_nothing(b, 300)


@scenario("17.3.2", "UNSUB of a durable subscription releases its deliveries at once",
          "A UNSUBs while holding the message: B gets it as attempt 2 within 1000 ms (ack wait 2000 ms); A's sid "
          "is then unknown (ACK: UNKNOWN_SID) and A gets no MSG", "16.1, 16.3")
def durable_release_unsub(ctx: Context):
    body = f"unsub-{ctx.nonce}".encode()
    a, (_, d1, _, _) = _one_delivery(ctx, "c-unsub", body)
    b = ctx.connect("b")
    dsub(ctx, b, 1, "c-unsub")
    ctx.expect_nothing(b, 300)
    t0 = time.monotonic()
    a.send([codec.UNSUB, 1])
    (_, d2, att, _), dt = _timed_redelivery(ctx, b, 1, body, t0, 0, 1000, "the released message")
    if att != 2:
        ctx.fail(f"a release counts as an attempt: expected attempt 2, got {att}")
    a.send([codec.ACK, 1, d1])
    ctx.expect_err(a, "UNKNOWN_SID", ref_op=codec.ACK, ref_id=1)
    b.send([codec.ACK, 1, d2])
    ctx.alive(b)
    ctx.expect_nothing(a, 200)


@scenario("17.3.3", "a release counts as an attempt on a consumer a SUB created too",
          "client-created consumer: A holds the message and closes; B, subscribing afterwards, gets it as attempt 2",
          "16.1, 16.3")
def durable_release_created(ctx: Context):
    subject, name = f"ev.rel.{ctx.nonce}", f"ev-rel-{ctx.nonce}"
    a = ctx.connect("a")
    dsub(ctx, a, 1, name, subject)
    p = ctx.connect("p")
    body = f"rel-{ctx.nonce}".encode()
    stored_pub(ctx, p, subject, [body])
    m = next_durable(ctx, a, 1, 3000, "the stored message")
    if m[0] != body or m[2] != 1:
        ctx.fail(f"expected {body!r} at attempt 1, got {m[0]!r} attempt {m[2]}")
    ctx.conns.pop("a").close()
    b = ctx.connect("b")
    dsub(ctx, b, 1, name, subject)
    payload, did, att, _ = next_durable(ctx, b, 1, 1000, "the released message")
    if payload != body or att != 2:
        ctx.fail(f"the released message must come back as attempt 2; got {payload!r} attempt {att}")
    b.send([codec.ACK, 1, did])
    ctx.alive(b)


@scenario("17.4.1", "credit flow: never more MSGs than credits granted, redeliveries included",
          "5 stored messages; nothing before CREDIT; CREDIT 2: 2 MSGs; ACKing them frees no credit; CREDIT 1: 1 MSG; "
          "its NAK redelivers only after CREDIT 1 (attempt 2); CREDIT 10: the other 2; 5 distinct messages in all",
          "16.4")
def durable_credit(ctx: Context):
    bodies = [f"c{i}-{ctx.nonce}".encode() for i in range(5)]
    p = ctx.connect("p")
    stored_pub(ctx, p, "dq.credit", bodies)
    w = ctx.connect("w")
    dsub(ctx, w, 1, "c-credit", flow="credit")
    ctx.expect_nothing(w, 300)
    w.send([codec.CREDIT, 1, 2])
    got = durable_msgs(ctx, w, 1, 0.4)
    if len(got) != 2:
        ctx.fail(f"{len(got)} MSGs after CREDIT 2")
    for m in got:
        w.send([codec.ACK, 1, m[1]])
    ctx.alive(w)
    ctx.expect_nothing(w, 300)
    w.send([codec.CREDIT, 1, 1])
    third = durable_msgs(ctx, w, 1, 0.4)
    if len(third) != 1:
        ctx.fail(f"{len(third)} MSGs after CREDIT 1")
    w.send([codec.NAK, 1, third[0][1]])
    ctx.alive(w)
    ctx.expect_nothing(w, 400)
    w.send([codec.CREDIT, 1, 1])
    again = durable_msgs(ctx, w, 1, 0.4)
    if len(again) != 1 or again[0][0] != third[0][0] or again[0][2] != 2:
        ctx.fail(f"after CREDIT 1 the NAKed message must come back as attempt 2; got "
                 f"{[(m[0], m[2]) for m in again]}")
    w.send([codec.ACK, 1, again[0][1]])
    w.send([codec.CREDIT, 1, 10])
    rest = durable_msgs(ctx, w, 1, 0.5)
    for m in rest:
        w.send([codec.ACK, 1, m[1]])
    seen = sorted(m[0] for m in got + third + rest)
    if seen != sorted(bodies):
        ctx.fail(f"delivered {seen}, expected each of {sorted(bodies)} once")
    ctx.alive(w)


@scenario("17.5.1", "the consumer's max_inflight caps outstanding deliveries across connections",
          "consumer max_inflight 2, two subscribers on two connections, 6 stored messages: never more than 2 "
          "outstanding in all; each ACK lets exactly one more through; all 6 delivered once, each to one subscriber",
          "16.2")
def durable_consumer_cap(ctx: Context):
    cap = consumer(ctx, "c-cap")["max_inflight"]
    bodies = [f"cap{i}-{ctx.nonce}".encode() for i in range(6)]
    p = ctx.connect("p")
    stored_pub(ctx, p, "dq.cap", bodies)
    subs = [ctx.connect("a"), ctx.connect("b")]
    for c in subs:
        dsub(ctx, c, 1, "c-cap")
    outstanding: list = []  # (conn, delivery)
    seen: list[bytes] = []

    def take(quiet):
        for c in subs:
            for m in durable_msgs(ctx, c, 1, quiet):
                outstanding.append((c, m))
                seen.append(m[0])
        if len(outstanding) > cap:
            ctx.fail(f"{len(outstanding)} deliveries outstanding on a consumer whose max_inflight is {cap}")

    take(0.4)
    if len(outstanding) != cap:
        ctx.fail(f"{len(outstanding)} outstanding with 6 stored and max_inflight {cap}; expected {cap}")
    for _ in range(len(bodies)):
        if not outstanding:
            break
        c, m = outstanding.pop(0)
        c.send([codec.ACK, 1, m[1]])
        take(0.3)
    if sorted(seen) != sorted(bodies):
        ctx.fail(f"delivered {sorted(seen)}; expected each of the 6 exactly once")
    if outstanding:
        ctx.fail(f"{len(outstanding)} deliveries left outstanding after every message was acknowledged")


@scenario("17.5.2", "a subscription's own max_inflight lowers its share; what it does not take stays for others",
          "SUB max_inflight 1 on a consumer capped at 10, 3 stored messages: it holds 1; a second subscription "
          "gets the other 2", "16.1, 16.2")
def durable_sub_cap(ctx: Context):
    bodies = [f"sub{i}-{ctx.nonce}".encode() for i in range(3)]
    p = ctx.connect("p")
    stored_pub(ctx, p, "dq.subcap", bodies)
    a = ctx.connect("a")
    dsub(ctx, a, 1, "c-subcap", max_inflight=1)
    got_a = durable_msgs(ctx, a, 1, 0.4)
    if len(got_a) != 1:
        ctx.fail(f"{len(got_a)} outstanding on a subscription with max_inflight 1")
    b = ctx.connect("b")
    dsub(ctx, b, 1, "c-subcap")
    got_b = durable_msgs(ctx, b, 1, 0.4)
    if len(got_b) != 2:
        ctx.fail(f"the second subscription received {len(got_b)}; expected the 2 the first did not take")
    if sorted(m[0] for m in got_a + got_b) != sorted(bodies):
        ctx.fail("the two subscriptions did not receive each message once")
    for c, got in ((a, got_a), (b, got_b)):
        for m in got:
            c.send([codec.ACK, 1, m[1]])
        ctx.alive(c)
    ctx.expect_nothing(a, 200)
