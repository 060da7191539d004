"""The gateway on a real NATS bus: relay, interest dedup, node inbox, outage, many nodes, interop."""
import asyncio
import threading
import time

import nats as natspy

from natsfix import free_port, gateway_config
from rawgw import ERR, MSG, OK, PING, PONG, PUB, REQ, RES, SUB, E, burst_to_slow_reader, frame


def test_pubsub_and_requests_over_nats(nats, start_gateway, clients):
    ns = nats()
    g = start_gateway(gateway_config([ns.url], "gw-a"))
    a = clients(g.client())
    b = clients(g.client())
    a.sub(1, "orders.>")
    b.pub("orders.new", b"hello", headers={"k": "v"})
    m = a.expect(MSG)
    assert m[2:5] == ["orders.new", b"hello", {"k": "v", "busgate-tenant": "demo"}]
    b.sub(2, "svc.echo")
    a.send(REQ, 1, "svc.echo", b"ping")
    req = b.expect(MSG)
    assert req[5].startswith("_INBOX.gw-a.")
    b.pub(req[5], b"pong")
    assert a.expect(RES)[1:4] == [1, 0, b"pong"]
    a.send(REQ, 2, "nobody.here", b"?")
    assert a.expect(RES)[1:3] == [2, E["NO_RESPONDERS"]]
    c = clients(g.client())
    c.sub(1, "svc.silent")
    b.send(REQ, 3, "svc.silent", b"?", None, 200)
    assert b.expect(RES, timeout=3)[1:3] == [3, E["REQUEST_TIMEOUT"]]
    assert g.http_get("/readyz")[0] == 200


def test_one_bus_subscription_per_subject_and_queue(nats, start_gateway, clients):
    ns = nats()
    g = start_gateway(gateway_config([ns.url], "gw-dedup"))
    subs = [clients(g.client()) for _ in range(10)]
    for i, c in enumerate(subs):
        c.sub(1, "dedup.x")
        c.sub(2, "dedup.q", queue="workers")
    other = clients(g.client("other-token"))
    other.sub(1, "dedup.x")  # another tenant: a different bus subject
    bus_subs = ns.subscriptions()
    assert bus_subs.count("t.demo.dedup.x") == 1
    assert bus_subs.count("t.demo.dedup.q") == 1
    assert bus_subs.count("t.other.dedup.x") == 1
    # fan-out: every local subscriber gets the message; the queue group delivers once
    p = clients(g.client())
    p.pub("dedup.x", b"all")
    p.pub("dedup.q", b"one")
    got = [[f[3] for f in c.drain(MSG, quiet=0.3)] for c in subs]
    assert all(g.count(b"all") == 1 for g in got), got  # every local subscriber, once
    assert sum(g.count(b"one") for g in got) == 1, got  # the queue group: one member, once
    # released when the last local subscriber leaves
    for c in subs:
        c.send(5, 1)
        c.send(5, 2)
        c.flush()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and "t.demo.dedup.x" in ns.subscriptions():
        time.sleep(0.05)
    remaining = ns.subscriptions()
    assert "t.demo.dedup.x" not in remaining and "t.demo.dedup.q" not in remaining
    assert "t.other.dedup.x" in remaining


def test_two_gateway_nodes_share_the_bus(nats, start_gateway, clients):
    ns = nats()
    ga = start_gateway(gateway_config([ns.url], "gw-a"))
    gb = start_gateway(gateway_config([ns.url], "gw-b"))
    a = clients(ga.client())
    b = clients(gb.client())
    a.sub(1, "cross.>")
    b.pub("cross.hello", b"from b")
    assert a.expect(MSG)[2:4] == ["cross.hello", b"from b"]
    # requests across nodes, answered through node A's inbox
    b.sub(2, "svc.b")
    a.send(REQ, 1, "svc.b", b"q")
    req = b.expect(MSG)
    b.pub(req[5], b"from node b")
    assert a.expect(RES)[1:4] == [1, 0, b"from node b"]
    # queue groups balance across nodes
    workers = [clients(ga.client()) for _ in range(2)] + [clients(gb.client()) for _ in range(2)]
    for w in workers:
        w.sub(9, "jobs", queue="workers")
    pub = clients(ga.client())
    for i in range(200):
        pub.pub("jobs", str(i).encode())
    pub.flush()
    counts = [len(w.drain(MSG, quiet=0.3)) for w in workers]
    assert sum(counts) == 200
    assert counts[0] + counts[1] > 0 and counts[2] + counts[3] > 0, counts


def test_three_server_cluster(nats_cluster, start_gateway, clients):
    n0, n1, n2 = nats_cluster
    ga = start_gateway(gateway_config([n0.url], "gw-a"))
    gb = start_gateway(gateway_config([n2.url], "gw-b"))
    a = clients(ga.client())
    b = clients(gb.client())
    a.sub(1, "c.>")
    b.sub(1, "svc.q")
    # Interest crosses the cluster's routes asynchronously: retry (bounded) until it has arrived.
    deadline = time.monotonic() + 10
    while True:
        b.pub("c.x", b"through the cluster")
        try:
            assert a.expect(MSG, timeout=0.2)[3] == b"through the cluster"
            break
        except TimeoutError:
            assert time.monotonic() < deadline, "no delivery across the cluster"
    req_id = 0
    while True:
        req_id += 1
        a.send(REQ, req_id, "svc.q", b"?", None, 2000)
        try:  # either the responder behind node B gets it, or node A answers NO_RESPONDERS
            req = b.expect(MSG, timeout=0.5)
        except TimeoutError:
            assert a.expect(RES)[1:3] == [req_id, E["NO_RESPONDERS"]]
            assert time.monotonic() < deadline, "the responder's interest never reached node A"
            continue
        b.pub(req[5], b"!")
        assert a.expect(RES)[1:4] == [req_id, 0, b"!"]
        break


def test_nats_outage_and_recovery(nats, start_gateway, clients):
    ns = nats()
    g = start_gateway(gateway_config([ns.url], "gw-out"))
    sub = clients(g.client())
    sub.sub(1, "live")
    qsub = clients(g.client())
    qsub.sub(2, "live.q", queue="workers")
    # traffic from a second connection throughout: before, during and after the outage
    traffic = clients(g.client())
    stop = threading.Event()
    refused = []

    def publish_loop():
        i = 0
        while not stop.is_set():
            i += 1
            traffic.send(PUB, "live.q", b"t", None, None, i)
            try:
                f = traffic.recv(timeout=1)
            except TimeoutError:
                continue
            if f[0] == ERR:
                refused.append(f[1])
            time.sleep(0.005)

    t = threading.Thread(target=publish_loop)
    t.start()
    pub = clients(g.client())
    pub.pub("live", b"before")
    assert sub.expect(MSG)[3] == b"before"
    ns.stop()
    deadline = time.monotonic() + 5
    while g.http_get("/readyz")[0] == 200 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert g.http_get("/readyz") == (503, "bus unavailable\n")
    # clients stay connected; publishes are refused with the documented error
    pub.pub("live", b"during", ack=7)
    err = pub.expect(ERR)
    assert err[1] == E["BUS_UNAVAILABLE"] and err[3:5] == [PUB, 7]
    pub.send(REQ, 8, "live", b"?")
    assert pub.expect(RES)[1:3] == [8, E["BUS_UNAVAILABLE"]]
    assert sub.flush()
    t0 = time.monotonic()
    ns.start()
    # subscriptions (plain and queue) are re-established without the client doing anything
    while True:
        pub.pub("live", b"after")
        try:
            m = sub.expect(MSG, timeout=0.1)
            if m[3] == b"after":
                break
        except TimeoutError:
            assert time.monotonic() - t0 < 5, "no delivery after NATS came back"
    elapsed = time.monotonic() - t0
    stop.set()
    t.join(5)
    assert elapsed < 2.0, elapsed
    assert g.http_get("/readyz")[0] == 200
    assert set(refused) <= {E["BUS_UNAVAILABLE"]} and refused  # refused only while NATS was away
    qsub.drain(MSG, quiet=0.1)
    traffic.pub("live.q", b"after")
    assert qsub.expect(MSG)[3] == b"after"  # the queue subscription delivers again


def test_interop_with_plain_nats_clients(nats, start_gateway, clients):
    ns = nats()
    g = start_gateway(gateway_config([ns.url], "gw-i"))
    sub = clients(g.client())
    sub.sub(1, "from.nats")
    gw_client = clients(g.client())
    ready = threading.Event()
    result = {}

    async def nats_side():
        nc = await natspy.connect(ns.url)
        seen = asyncio.Queue()

        async def on_msg(m):
            await seen.put(m)

        async def service(m):
            tenant = (m.headers or {}).get("busgate-tenant")
            await m.respond(f"served {tenant}: {m.data.decode()}".encode())

        await nc.subscribe("t.demo.to.nats", cb=on_msg)
        await nc.subscribe("svc.data.>", cb=service)
        await nc.flush()
        ready.set()
        await nc.publish("t.demo.from.nats", b"hello gateway", headers={"origin": "nats-py"})
        await nc.flush()
        result["msg"] = await asyncio.wait_for(seen.get(), 10)
        await nc.drain()

    t = threading.Thread(target=lambda: asyncio.run(nats_side()))
    t.start()
    assert ready.wait(10)
    # a plain NATS publish on the tenant's bus subject reaches the gateway subscriber
    m_gw = sub.expect(MSG)
    assert m_gw[2:5] == ["from.nats", b"hello gateway", {"origin": "nats-py"}]
    # a NATS-side service answers a gateway client's request through the import, seeing the tenant
    gw_client.send(REQ, 1, "data.users", b"q")
    assert gw_client.expect(RES)[1:4] == [1, 0, b"served demo: q"]
    # a gateway client's publish reaches a plain NATS subscriber with the tenant header
    gw_client.pub("to.nats", b"hello nats")
    t.join(15)
    m = result["msg"]
    assert m.data == b"hello nats" and m.headers["busgate-tenant"] == "demo"


def test_nats_user_password(nats, start_gateway, clients):
    ns = nats(extra=["--user", "gw", "--pass", "s3cret"])
    cfg = gateway_config([ns.url], "gw-auth").replace(
        "bus: {kind: nats,", 'bus: {kind: nats, user: "gw", password: "s3cret",')
    g = start_gateway(cfg)
    a = clients(g.client())
    a.sub(1, "auth.ok")
    a.pub("auth.ok", b"x")
    assert a.expect(MSG)[3] == b"x"
    assert g.http_get("/readyz")[0] == 200


def test_gateway_starts_before_nats_and_becomes_ready(nats, start_gateway, clients):
    port = free_port()
    g = start_gateway(gateway_config([f"nats://127.0.0.1:{port}"], "gw-late"))
    assert g.http_get("/readyz")[0] == 503
    c = clients(g.client())
    c.sub(1, "late")  # accepted while the bus is down, live once it is up
    ns = nats(port=port)
    deadline = time.monotonic() + 5
    while g.http_get("/readyz")[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    p = clients(g.client())
    p.pub("late", b"x")
    assert c.expect(MSG)[3] == b"x"
    assert ns.subscriptions().count("t.demo.late") == 1


def test_headers_with_empty_values_cross_the_bus(nats, start_gateway, clients):
    ns = nats()
    ga = start_gateway(gateway_config([ns.url], "gw-h1"))
    gb = start_gateway(gateway_config([ns.url], "gw-h2"))
    sub = clients(gb.client())
    sub.sub(1, "h.>")
    pub = clients(ga.client())
    headers = {f"x-{i}": "" if i % 3 == 0 else f"v{i}" for i in range(40)}
    pub.pub("h.x", b"p", headers=headers)
    assert sub.expect(MSG)[4] == {**headers, "busgate-tenant": "demo"}


def test_max_payload_fits_the_bus(nats, start_gateway, clients):
    ns = nats()  # nats-server's default max_payload is 1 MiB, headers included
    g = start_gateway(gateway_config([ns.url], "gw-mp"))
    c = clients(g.client())
    limit = c.welcome[5]["max_payload"]
    assert limit <= 1048576 - 65536
    c.sub(1, "big")
    c.pub("big", b"x" * limit, headers={"k": "v" * 4000}, ack=1)
    assert c.expect(MSG, timeout=10)[3] == b"x" * limit


def test_nats_token_auth(nats, start_gateway, clients):
    ns = nats(extra=["--auth", "bus-token-1"])
    cfg = gateway_config([ns.url], "gw-tok").replace("bus: {kind: nats,", 'bus: {kind: nats, token: "bus-token-1",')
    g = start_gateway(cfg)
    a = clients(g.client())
    a.sub(1, "tok.ok")
    a.pub("tok.ok", b"x")
    assert a.expect(MSG)[3] == b"x"


def test_tls_to_nats(nats, start_gateway, clients, tmp_path):
    import subprocess

    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=bus CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "nats.key", "-out", "nats.csr", "-subj", "/CN=nats")
    (tmp_path / "ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "nats.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "nats.pem", "-days", "2", "-extfile", "ext")
    ns = nats(extra=["--tls", "--tlscert", str(tmp_path / "nats.pem"), "--tlskey", str(tmp_path / "nats.key")])
    url = f"tls://127.0.0.1:{ns.port}"
    cfg = gateway_config([url], "gw-tls").replace(
        "bus: {kind: nats,", f'bus: {{kind: nats, tls: {{ca: "{tmp_path / "ca.pem"}"}},')
    g = start_gateway(cfg)
    a = clients(g.client())
    a.sub(1, "tls.ok")
    a.pub("tls.ok", b"secure")
    assert a.expect(MSG)[3] == b"secure"
    assert g.http_get("/readyz")[0] == 200


def test_bus_address_that_is_not_nats(nats, start_gateway, clients):
    ns = nats()
    # the server's HTTP monitoring port answers, but not with the NATS protocol
    g = start_gateway(gateway_config([f"nats://127.0.0.1:{ns.mon}"], "gw-wrong"))
    g.wait_log("no INFO from the server")
    assert g.http_get("/readyz") == (503, "bus unavailable\n")
    c = clients(g.client())  # clients are still served
    c.send(REQ, 1, "x", b"?")
    assert c.expect(RES)[1:3] == [1, E["BUS_UNAVAILABLE"]]


def test_burst_is_paced_to_a_consumer_that_reads(nats, start_gateway, clients):
    """Producer flow control: a burst twenty times max_pending_bytes, published without pause, reaches a
    consumer that keeps reading (only slower than the burst) whole, instead of cutting it off."""
    ns = nats()
    cfg = gateway_config([ns.url], "gw-fc").replace("timeouts:", "limits: {max_pending_bytes: 1048576}\ntimeouts:")
    g = start_gateway(cfg)
    reader = clients(g.client())
    reader.sub(1, "burst")
    pub = clients(g.client())
    n, payload = 600, b"y" * 32768  # ~20 MB
    got, errors = burst_to_slow_reader(pub, reader, "burst", n, payload)
    assert E["SLOW_CONSUMER"] not in errors, errors
    assert len(got) == n and set(got) == {len(payload)}, (len(got), errors)
    paces = [line for line in g.http_get("/metrics")[1].splitlines() if line.startswith("busgate_producer_paces_total ")]
    assert paces and int(paces[0].split()[1]) > 0, paces  # the pacing is visible to operators


def test_pipelined_subs_are_confirmed_in_order_and_live_for_what_follows(nats, start_gateway, clients):
    """SUBs are confirmed once NATS has them, without holding the gateway's I/O thread; frames sent
    behind a SUB wait for it, so a PUB pipelined after 50 SUBs (shared and new bus subscriptions
    alike) reaches all of them, and the PONG behind them all comes after every OK."""
    ns = nats()
    g = start_gateway(gateway_config([ns.url], "gw-pipe"))
    other = clients(g.client())
    other.sub(1, "pipe.shared")  # an existing bus subscription that some SUBs below join
    c = clients(g.client())
    burst = b"".join(frame(SUB, sid, "pipe.shared" if sid % 2 else f"pipe.{sid}") for sid in range(1, 51))
    burst += b"".join(frame(PUB, "pipe.shared" if sid % 2 else f"pipe.{sid}", b"m", None, None, 0)
                      for sid in range(1, 51))
    burst += frame(PING)
    c.send_raw(burst)
    want = 25 * 25 + 25
    oks, msgs, pong = [], [], False
    while not (pong and len(msgs) >= want):
        f = c.recv(timeout=10)
        if f[0] == OK:
            assert not pong, "an OK after the PONG"
            oks.append(f[2])
        elif f[0] == MSG:
            msgs.append(f[1])
        elif f[0] == PONG:
            pong = True
    assert oks == list(range(1, 51))
    # every odd sid is on pipe.shared (25 subscriptions, 25 publishes each), every even sid has its own
    assert sorted(msgs) == sorted([s for s in range(1, 51, 2) for _ in range(25)] + list(range(2, 51, 2)))
    assert other.expect(MSG)[3] == b"m"


class RawNats:
    """A plain NATS protocol peer (no client library), free to send what a library would refuse."""

    def __init__(self, url: str):
        import socket
        host, port = url.removeprefix("nats://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.buf = b""
        self.line()  # INFO
        self.sock.sendall(b'CONNECT {"verbose":false,"headers":true,"no_responders":true}\r\nPING\r\n')
        while not self.line().startswith(b"PONG"):
            pass

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def hpub(self, subject: bytes, headers: bytes, payload: bytes, reply: bytes = b"", status: bytes = b""):
        block = b"NATS/1.0" + (b" " + status if status else b"") + b"\r\n" + headers + b"\r\n"
        total = len(block) + len(payload)
        args = b" ".join(x for x in (subject, reply, str(len(block)).encode(), str(total).encode()) if x)
        self.sock.sendall(b"HPUB " + args + b"\r\n" + block + payload + b"\r\n")

    def next_msg(self):
        """The next MSG/HMSG: (subject, reply)."""
        while True:
            parts = self.line().split()
            if parts and parts[0] in (b"MSG", b"HMSG"):
                size = int(parts[-1])
                while len(self.buf) < size + 2:
                    self.buf += self.sock.recv(65536)
                self.buf = self.buf[size + 2:]
                reply = parts[3] if len(parts) == (6 if parts[0] == b"HMSG" else 5) else b""
                return parts[1], reply

    def subscribe(self, subject: bytes, sid: int):
        self.sock.sendall(b"SUB " + subject + b" " + str(sid).encode() + b"\r\n")

    def flush(self):
        self.sock.sendall(b"PING\r\n")
        while not self.line().startswith(b"PONG"):
            pass

    def close(self):
        self.sock.close()


def test_what_the_bus_sends_is_delivered_only_as_the_spec_allows(nats, start_gateway, clients):
    ns = nats()
    g = start_gateway(gateway_config([ns.url], "gw-conform"))
    c = clients(g.client())
    c.sub(1, "u8.>")
    raw = RawNats(ns.url)
    try:
        raw.hpub(b"t.demo.u8.\xff", b"k: v\r\n", b"bad subject")  # not UTF-8: not deliverable
        many = b"".join(b"h%d: %d\r\n" % (i, i) for i in range(70))
        raw.hpub(b"t.demo.u8.many", many, b"70 headers")
        bad = (b"bad key: space\r\nok-key: fine\r\nlong: " + b"x" * 5000 + b"\r\n"
               b"dup: first\r\ndup: second\r\n")
        raw.hpub(b"t.demo.u8.bad", bad, b"bad headers")
        raw.flush()
        got = [c.expect(MSG) for _ in range(2)]  # the first is never delivered; the connection lives
        assert [m[2] for m in got] == ["u8.many", "u8.bad"]
        assert got[0][4] == {f"h{i}": str(i) for i in range(64)}  # at most 64 headers
        assert got[1][4] == {"ok-key": "fine", "dup": "first"}  # grammar, value length; first of a repeat
        metrics = g.http_get("/metrics")[1]
        assert "busgate_bus_messages_dropped_total 1" in metrics
        assert "busgate_bus_headers_dropped_total 8" in metrics  # 6 past 64, a bad key, a long value
        # A status-only reply is not an answer: 408 is a timeout, anything but 503/408 an error.
        raw.subscribe(b"t.demo.svc.status.>", 7)
        raw.flush()
        for req_id, (status, code) in enumerate([(b"408 Request Timeout", "REQUEST_TIMEOUT"),
                                                 (b"404 No Messages", "INTERNAL_ERROR")], start=1):
            c.send(REQ, req_id, "svc.status.x", b"?", None, 3000)
            _, reply = raw.next_msg()
            raw.hpub(reply, b"", b"", status=status)
            raw.flush()
            res = c.expect(RES)
            assert res[1:3] == [req_id, E[code]], res
    finally:
        raw.close()
