"""A hostile tenant against a three-tenant gateway with service and stream imports, on the memory bus
and on a real nats-server: what it tries must not reach, slow down or revoke anything of the others
(docs/protocol.md sections 9, 10, 12.3 and 15).

Tenants: `acme` and `mallory` import the shared data service (`data.>`, a service import) and the
shared feed (`feed.>`, a stream import); `svc` answers the data service (a stream import of the
requests) and publishes the feed (a service import). mallory is the hostile one.
"""
from __future__ import annotations

import re
import signal
import time

import pytest

from rawgw import ERR, MSG, REQ, RES, E, Closed, Gateway, RawClient, bus_config

TENANTS = """
tenants:
  - name: acme
    tokens: ["acme-token"]
    imports:
      - {kind: service, from: "data.>", to: "shared.data.>"}
      - {kind: stream, from: "feed.>", to: "shared.feed.>"}
  - name: mallory
    tokens: ["mallory-token"]
    imports:
      - {kind: service, from: "data.>", to: "shared.data.>"}
      - {kind: stream, from: "feed.>", to: "shared.feed.>"}
  - name: svc
    tokens: ["svc-token"]
    imports:
      - {kind: stream, from: "data.>", to: "shared.data.>"}
      - {kind: service, from: "feed.>", to: "shared.feed.>"}
"""


def config(bus: str, node_id: str = "gw", limits: str = "", tenants: str = TENANTS) -> str:
    return f"node_id: {node_id}\n{bus}\n{limits}\n{tenants}"


@pytest.fixture(params=["memory", "nats"])
def bus(request):
    with bus_config(request.param) as section:
        yield section


@pytest.fixture
def started():
    gs: list[Gateway] = []
    cs: list[RawClient] = []
    yield gs, cs
    for c in cs:
        c.close()
    for g in gs:
        g.stop()


def start(started, cfg: str) -> Gateway:
    g = Gateway(cfg)
    started[0].append(g)
    return g


def connect(started, g: Gateway, token: str, **kw) -> RawClient:
    c = RawClient(g.tcp, **kw)
    c.hello(token)
    started[1].append(c)
    return c


def metric(g: Gateway, name: str) -> float:
    status, body = g.http_get("/metrics")
    assert status == 200
    m = re.search(rf"^{name} (\S+)$", body, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def test_a_forged_reply_subject_cannot_take_another_tenants_reply(bus, started):
    """mallory's own reply subjects that read like request inboxes (`_INBOX.gw.<n>`, the node id is
    `gw`) reach the responder as aliases that never equal acme's real request inbox."""
    g = start(started, config(bus))
    s = connect(started, g, "svc-token")
    s.sub(1, "data.>")
    m = connect(started, g, "mallory-token")
    m.sub(1, ">")  # everything of its own namespace, its fake inboxes included
    a = connect(started, g, "acme-token")
    # mallory floods the service with messages whose reply subjects look like node inboxes
    for i in range(50):
        m.pub("data.q", f"m{i}".encode(), reply_to=f"_INBOX.gw.{i}")
    m.flush()
    a.send(REQ, 7, "data.q", b"acme asks", None, 3000)
    replies_to = {}
    deadline = time.monotonic() + 5
    while len(replies_to) < 51 and time.monotonic() < deadline:
        f = s.expect(MSG)
        replies_to[bytes(f[3])] = f[5]
    assert len(replies_to) == 51
    visible = list(replies_to.values())
    assert len(set(visible)) == 51, "two messages got the same reply name"
    for body, reply in replies_to.items():
        if body != b"acme asks":
            assert reply.startswith("_INBOX.~"), reply  # mallory's own subject, aliased
    # the service answers every message on the reply subject it was shown
    for body, reply in replies_to.items():
        s.pub(reply, b"answer to " + body)
    s.flush()
    res = a.expect(RES)
    assert res[1] == 7 and res[2] == 0 and bytes(res[3]) == b"answer to acme asks"
    got = {bytes(f[3]) for f in m.drain(MSG)}
    assert got == {f"answer to m{i}".encode() for i in range(50)}


def test_queue_groups_on_a_shared_stream_stay_per_tenant(bus, started):
    g = start(started, config(bus))
    a1, a2 = connect(started, g, "acme-token"), connect(started, g, "acme-token")
    m1, m2 = connect(started, g, "mallory-token"), connect(started, g, "mallory-token")
    for c in (a1, a2, m1, m2):
        c.sub(1, "feed.>", queue="workers")
    s = connect(started, g, "svc-token")
    for i in range(20):
        s.pub("feed.prices", str(i).encode())
    s.flush()
    acme = sorted(int(f[3]) for c in (a1, a2) for f in c.drain(MSG))
    mallory = sorted(int(f[3]) for c in (m1, m2) for f in c.drain(MSG))
    assert acme == list(range(20)), "acme's group did not get every message once"
    assert mallory == list(range(20)), "mallory's group did not get every message once"


def test_another_tenants_flood_does_not_expire_a_pending_reply_grant(bus, started):
    g = start(started, config(bus))
    s = connect(started, g, "svc-token")
    s.sub(1, "data.>")
    a = connect(started, g, "acme-token")
    a.send(REQ, 1, "data.slow", b"acme", None, 10000)
    first = s.expect(MSG)
    assert bytes(first[3]) == b"acme"
    acme_reply = first[5]
    m = connect(started, g, "mallory-token")
    for i in range(6000):  # more than a connection keeps grants for one tenant
        m.pub("data.spam", b"x", reply_to=f"r.{i}")
    m.flush()
    n = 0
    deadline = time.monotonic() + 20
    while n < 6000 and time.monotonic() < deadline:
        f = s.expect(MSG, timeout=10)
        n += f[0] == MSG
    assert n == 6000
    s.pub(acme_reply, b"late answer")
    s.flush()
    errs = [f for f in s.drain(ERR)]
    assert not errs, f"the responder's reply was refused: {errs!r}"
    res = a.expect(RES)
    assert res[2] == 0 and bytes(res[3]) == b"late answer"


def test_a_request_to_a_reply_subject_is_refused(bus, started):
    g = start(started, config(bus))
    m = connect(started, g, "mallory-token")
    m.send(REQ, 3, "_INBOX.gw.1", b"?", None, 1000)
    res = m.expect(RES)
    assert res[1] == 3 and res[2] == E["PERMISSION_DENIED"]


def test_a_reload_ends_subscriptions_the_new_configuration_forbids(bus, started):
    g = start(started, config(bus))
    m = connect(started, g, "mallory-token")
    m.sub(1, "feed.>")         # through the stream import
    m.sub(2, "secret.>")       # its own namespace, about to be denied
    m.sub(3, "public.>")       # stays
    s = connect(started, g, "svc-token")
    s.pub("feed.x", b"before")
    s.flush()
    assert [bytes(f[3]) for f in m.drain(MSG)] == [b"before"]
    # the operator takes the feed away from mallory and denies it secret.>
    new = TENANTS.replace(
        '''  - name: mallory
    tokens: ["mallory-token"]
    imports:
      - {kind: service, from: "data.>", to: "shared.data.>"}
      - {kind: stream, from: "feed.>", to: "shared.feed.>"}''',
        '''  - name: mallory
    tokens: ["mallory-token"]
    permissions: {subscribe: {deny: ["secret.>"]}}
    imports:
      - {kind: service, from: "data.>", to: "shared.data.>"}''')
    assert new != TENANTS
    g.config_path.write_text(config(bus, tenants=new))
    g.signal(signal.SIGHUP)
    ended = {m.expect_err("PERMISSION_DENIED")[4], m.expect_err("PERMISSION_DENIED")[4]}
    assert ended == {1, 2}
    g.wait_log(r"subscriptions ended by the reload")
    s.pub("feed.x", b"after")
    s.flush()
    p = connect(started, g, "mallory-token")
    p.pub("secret.x", b"hidden")
    p.pub("public.x", b"visible")
    p.flush()
    got = [(f[1], bytes(f[3])) for f in m.drain(MSG, quiet=0.5)]
    assert got == [(3, b"visible")], got
    a = connect(started, g, "acme-token")  # untouched tenants keep their import
    a.sub(1, "feed.>")
    s.pub("feed.x", b"for acme")
    s.flush()
    assert [bytes(f[3]) for f in a.drain(MSG)] == [b"for acme"]


def test_a_client_that_never_reads_cannot_grow_memory_with_pings(bus, started):
    g = start(started, config(bus, limits="limits: {max_pending_bytes: 65536}"))
    m = connect(started, g, "mallory-token", rcvbuf=4096)
    ping = b"\x00\x00\x00\x02\x91\x0b"
    closed = False
    sent = 0
    try:
        for _ in range(200):  # up to 6 MB of PINGs, 100x the bound, in writes of 30 KB
            m.sock.sendall(ping * 5000)
            sent += 5000
    except (BrokenPipeError, ConnectionResetError, OSError):
        closed = True
    if not closed:
        try:
            m.sock.settimeout(10)
            m.sock.sendall(ping * 5000)
            m.expect_closed(10)
        except (Closed, OSError, TimeoutError):
            pass
    g.wait_log(r"mallory.*SLOW_CONSUMER|SLOW_CONSUMER.*read its answers", timeout=15)
    a = connect(started, g, "acme-token")  # everyone else is served
    a.flush()


def test_stalled_subscribers_of_one_tenant_stay_within_its_budget(bus, started):
    # 20 stalled subscribers, each allowed 4 MiB, in a tenant budget of 16 MiB: the budget, not the
    # subscriber count, bounds what mallory holds; acme's reader gets everything.
    limits = "limits: {max_pending_bytes: 4194304, max_tenant_queued_bytes: 16777216, max_backlog_bytes: 1048576}"
    g = start(started, config(bus, limits=limits))
    stalled = []
    for _ in range(20):
        c = connect(started, g, "mallory-token", rcvbuf=4096)
        c.sub(1, "feed.>")
        stalled.append(c)
    a = connect(started, g, "acme-token")
    a.sub(1, "feed.>")
    s = connect(started, g, "svc-token")
    payload = b"x" * 16384
    n = 1280  # 20 MiB published
    got = 0
    peak = 0.0
    for i in range(n):
        s.pub("feed.big", payload)
        if i % 64 == 63:
            s.flush(timeout=20)
            got += len(a.drain(MSG, quiet=0.05))
            peak = max(peak, metric(g, "busgate_queued_bytes"))
    s.flush(timeout=20)
    got += len(a.drain(MSG, quiet=1.0))
    assert got == n, f"acme's reader got {got} of {n}"
    # Past the budget, connections holding a quarter of max_pending (1 MiB) are cut; the others
    # (readers) are not, and the accounting lags by up to 64 KiB per holder. Without the budget the
    # stalled subscribers would hold 20 x 4 MiB.
    assert peak <= 16 * 2**20 + 20 * (2**20 + 65536) + 2 * 2**20, peak
    assert metric(g, "busgate_budget_disconnects_total") >= 1
    # the stalled peers read nothing: they are closed at the end of the fatal ERR's write grace
    g.wait_log(r"tenant=mallory .*reached max_tenant_queued_bytes", timeout=15)
