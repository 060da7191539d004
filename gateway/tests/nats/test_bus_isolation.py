"""What other users of the NATS bus can and cannot do to a gateway's clients: guess request inboxes,
run a second node with the same node_id, send differently cased reserved headers; header values
travel byte for byte; the NATS permissions of docs/operations.md keep tenant namespaces to the
gateway."""
import re
import socket
import time

from natsfix import gateway_config
from rawgw import MSG, REQ, RES, E

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class RawNats:
    """A NATS client speaking the wire protocol over a socket, so the test controls every byte."""

    def __init__(self, port, user=None, password=None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""
        self.msgs = []  # (subject, reply, header block bytes or None, payload)
        self.errors = []
        assert self._line().startswith(b"INFO ")
        auth = f',"user":"{user}","pass":"{password}"' if user else ""
        self.send(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true,'
                  b'"protocol":1' + auth.encode() + b"}\r\n")
        self.flush()

    def send(self, data: bytes):
        self.sock.sendall(data)

    def _fill(self, deadline):
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("nats-server closed the connection")
        self.buf += chunk

    def _line(self, deadline=None):
        deadline = deadline or time.monotonic() + 5
        while b"\r\n" not in self.buf:
            self._fill(deadline)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _bytes(self, n, deadline):
        while len(self.buf) < n + 2:
            self._fill(deadline)
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def _read_one(self, deadline):
        """Reads one protocol line (and its payload); returns True for a PONG."""
        line = self._line(deadline)
        parts = line.split()
        if parts[0] == b"PING":
            self.send(b"PONG\r\n")
        elif parts[0] == b"PONG":
            return True
        elif parts[0] == b"-ERR":
            self.errors.append(line.decode())
        elif parts[0] == b"MSG":
            reply = parts[3].decode() if len(parts) == 5 else None
            self.msgs.append((parts[1].decode(), reply, None, self._bytes(int(parts[-1]), deadline)))
        elif parts[0] == b"HMSG":
            reply = parts[3].decode() if len(parts) == 6 else None
            hlen, total = int(parts[-2]), int(parts[-1])
            data = self._bytes(total, deadline)
            self.msgs.append((parts[1].decode(), reply, data[:hlen], data[hlen:]))
        return False

    def flush(self, timeout=5.0):
        """PING/PONG: the server has processed everything sent before; messages meanwhile are kept."""
        self.send(b"PING\r\n")
        deadline = time.monotonic() + timeout
        while not self._read_one(deadline):
            pass

    def sub(self, subject, sid):
        self.send(f"SUB {subject} {sid}\r\n".encode())
        self.flush()

    def pub(self, subject, payload=b"", reply=None, headers: bytes | None = None):
        r = f" {reply}" if reply else ""
        if headers is None:
            self.send(f"PUB {subject}{r} {len(payload)}\r\n".encode() + payload + b"\r\n")
        else:
            self.send(f"HPUB {subject}{r} {len(headers)} {len(headers) + len(payload)}\r\n".encode() + headers +
                      payload + b"\r\n")

    def wait_msgs(self, pred, timeout=5.0):
        deadline = time.monotonic() + timeout
        while True:
            got = [m for m in self.msgs if pred(m)]
            if got:
                return got
            try:
                self._read_one(deadline)
            except (socket.timeout, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"no such message; got {self.msgs!r}")

    def close(self):
        self.sock.close()


def token_value(tok):
    v = 0
    for c in tok:
        v = v * 62 + BASE62.index(c)
    return v


def token_text(v):
    s = ""
    for _ in range(11):
        s = BASE62[v % 62] + s
        v //= 62
    return s


def port_of(ns):
    return ns.port


def metric(g, name):
    status, body = g.http_get("/metrics")
    assert status == 200
    m = re.search(rf"^{name} (\d+)", body, re.M)
    return int(m.group(1)) if m else 0


# ---------------------------------------------------------------------------------------- inboxes

def test_a_bus_peer_cannot_answer_a_request_by_guessing_its_inbox(nats, start_gateway, clients):
    ns = nats()
    g = start_gateway(gateway_config([ns.url], "gw-inbox"))
    spy = RawNats(port_of(ns))
    spy.sub("_INBOX.>", 1)  # sees every reply, so every inbox that was answered
    spy.sub("t.demo.svc.>", 2)  # and every request with its reply subject
    requester = clients(g.client())
    responder = clients(g.client())
    responder.sub(1, "svc.>")
    # Several answered requests: the peer sees their inboxes.
    for i in range(5):
        requester.send(REQ, i + 1, "svc.echo", b"q%d" % i)
        req = responder.expect(MSG)
        responder.pub(req[5], b"a%d" % i)
        assert requester.expect(RES)[1:4] == [i + 1, 0, b"a%d" % i]
    spy.flush()
    seen = [m[0] for m in spy.msgs if m[0].startswith("_INBOX.")]
    assert len(seen) == 5, seen
    for inbox in seen:
        assert re.fullmatch(r"_INBOX\.gw-inbox\.[0-9A-Za-z]{11}", inbox), inbox
    tokens = [token_value(s.rsplit(".", 1)[1]) for s in seen]

    def guesses():
        out = set()
        for t in tokens:
            for d in range(-3, 4):
                if d:
                    out.add(token_text((t + d) % 2**64))
        top = max(tokens)
        out.update(token_text((top + k) % 2**64) for k in range(1, 20))
        out.update(str(n) for n in range(0, 40))  # sequential inboxes, as they once were
        return [f"_INBOX.gw-inbox.{x}" for x in out]

    # A request the responder answers late: every guess is published first, none is taken.
    requester.send(REQ, 10, "svc.slow", b"?", None, 3000)
    req = responder.expect(MSG)
    for subject in guesses():
        spy.pub(subject, b"forged")
    spy.flush()
    time.sleep(0.2)
    responder.pub(req[5], b"real")
    assert requester.expect(RES)[1:4] == [10, 0, b"real"]
    # A request nobody answers: the guesses do not answer it either.
    requester.send(REQ, 11, "svc.never", b"?", None, 500)
    responder.expect(MSG)
    for subject in guesses():
        spy.pub(subject, b"forged")
    spy.flush()
    assert requester.expect(RES, timeout=3)[1:3] == [11, E["REQUEST_TIMEOUT"]]
    assert not [f for f in requester.drain(RES, quiet=0.3)], "a forged reply reached the requester"
    spy.close()


# ------------------------------------------------------------------------------ duplicate node_id

def readyz(g):
    return g.http_get("/readyz")


def test_a_second_node_with_the_same_node_id_is_not_ready_until_the_first_is_gone(nats, start_gateway, clients):
    ns = nats()
    cfg = gateway_config([ns.url], "gw-dup")
    first = start_gateway(cfg)
    assert readyz(first)[0] == 200
    second = start_gateway(cfg)
    status, body = readyz(second)
    assert status == 503 and "gw-dup" in body, (status, body)
    second.wait_log(r"another live node uses node_id gw-dup on the bus; refusing to become ready")
    first.wait_log(r"another node with node_id gw-dup is on the bus")
    assert readyz(first)[0] == 200
    # Requests through either node get their own replies, never each other's.
    responder = clients(first.client())
    responder.sub(1, "svc.echo")
    a, b = clients(first.client()), clients(second.client())
    for i in range(20):
        a.send(REQ, i + 1, "svc.echo", b"from-first-%d" % i)
        b.send(REQ, i + 1, "svc.echo", b"from-second-%d" % i)
    for _ in range(40):
        m = responder.expect(MSG)
        responder.pub(m[5], m[3])
    got_a = sorted((f[1], f[3]) for f in (a.expect(RES) for _ in range(20)))
    got_b = sorted((f[1], f[3]) for f in (b.expect(RES) for _ in range(20)))
    assert got_a == sorted((i + 1, b"from-first-%d" % i) for i in range(20))
    assert got_b == sorted((i + 1, b"from-second-%d" % i) for i in range(20))
    assert not a.drain(RES, quiet=0.3) and not b.drain(RES, quiet=0.1)
    # Still not ready a few probes later; ready within a few seconds once the first is gone.
    time.sleep(2.5)
    assert readyz(second)[0] == 503
    assert readyz(first)[0] == 200
    first.proc.kill()
    first.proc.wait()
    t0 = time.monotonic()
    while readyz(second)[0] != 200:
        assert time.monotonic() - t0 < 5, "the second node did not become ready:\n" + "\n".join(second.log_lines[-10:])
        time.sleep(0.1)
    second.wait_log(r"no other live node uses node_id gw-dup on the bus any more")
    # A third node with the id now waits for the second.
    third = start_gateway(cfg)
    assert readyz(third)[0] == 503
    assert readyz(second)[0] == 200


def test_nodes_with_their_own_ids_do_not_see_a_conflict(nats, start_gateway):
    ns = nats()
    a = start_gateway(gateway_config([ns.url], "gw-one"))
    b = start_gateway(gateway_config([ns.url], "gw-two"))
    ns.stop()
    ns.start()  # both reconnect and probe again
    for g in (a, b):
        t0 = time.monotonic()
        while readyz(g)[0] != 200:
            assert time.monotonic() - t0 < 5
            time.sleep(0.05)
    assert not [line for g in (a, b) for line in g.log_lines if "node_id" in line and "another" in line]


# ----------------------------------------------------------------------------------------- headers

def test_reserved_headers_from_the_bus_arrive_once_in_lowercase(nats, start_gateway, clients):
    ns = nats()
    g = start_gateway(gateway_config([ns.url], "gw-hdr"))
    c = clients(g.client())
    c.sub(1, "hdr.>")
    dropped = metric(g, "busgate_bus_headers_dropped_total")
    peer = RawNats(port_of(ns))
    block = (b"NATS/1.0\r\nBusgate-Tenant: evil\r\nbusgate-tenant: demo\r\nBUSGATE-TENANT: x\r\n"
             b"busgate-Trace: t\r\nbusgate-tenant: again\r\nbusgatex: kept\r\n\r\n")
    peer.pub("t.demo.hdr.reserved", b"p", headers=block)
    peer.flush()
    m = c.expect(MSG)
    assert m[2:5] == ["hdr.reserved", b"p", {"busgate-tenant": "demo", "busgatex": "kept"}]
    # Only other casings: no busgate-tenant at all.
    peer.pub("t.demo.hdr.cased", b"q", headers=b"NATS/1.0\r\nBusgate-Tenant: evil\r\nk: v\r\n\r\n")
    peer.flush()
    assert c.expect(MSG)[2:5] == ["hdr.cased", b"q", {"k": "v"}]
    assert metric(g, "busgate_bus_headers_dropped_total") - dropped == 4
    peer.close()


def test_header_values_travel_byte_for_byte(nats, start_gateway, clients):
    ns = nats()
    ga = start_gateway(gateway_config([ns.url], "gw-va"))
    gb = start_gateway(gateway_config([ns.url], "gw-vb"))
    values = {"pad": "  both  ", "tab": "\tlead", "trail": "end\t", "mixed": " \t x \t ", "empty": "",
              "inner": "a  b", "colon": ": v", "utf8": " é "}
    sub = clients(gb.client())
    sub.sub(1, "vals.>")
    spy = RawNats(port_of(ns))
    spy.sub("t.demo.vals.>", 1)
    pub = clients(ga.client())
    pub.pub("vals.one", b"x", headers=values)
    m = sub.expect(MSG)
    assert m[4] == {**values, "busgate-tenant": "demo"}
    # On the bus: `Key: value`, the value as it was after the one space.
    raw = spy.wait_msgs(lambda m: m[0] == "t.demo.vals.one")[0][2]
    assert b"\r\npad:   both  \r\n" in raw and b"\r\nmixed:  \t x \t \r\n" in raw and b"\r\nempty: \r\n" in raw
    # From another NATS client: `key:value` and `key: value` both mean value; more is kept.
    spy.pub("t.demo.vals.raw", b"y",
            headers=b"NATS/1.0\r\ntight:v1\r\nspaced: v2\r\nmore:  v3 \r\ntabbed:\tv4\r\nnone:\r\n\r\n")
    spy.flush()
    assert sub.expect(MSG)[2:5] == ["vals.raw", b"y", {"tight": "v1", "spaced": "v2", "more": " v3 ",
                                                      "tabbed": "\tv4", "none": ""}]
    # Request and reply headers too, across the two nodes.
    responder = clients(gb.client())
    responder.sub(2, "vals.svc")
    pub.send(REQ, 1, "vals.svc", b"q", values)
    req = responder.expect(MSG)
    assert req[4] == {**values, "busgate-tenant": "demo"}
    responder.pub(req[5], b"r", headers={"back": " \tspaced\t "})
    res = pub.expect(RES)
    assert res[1:4] == [1, 0, b"r"] and res[4] == {"back": " \tspaced\t ", "busgate-tenant": "demo"}
    spy.close()


# ------------------------------------------------------------------- NATS permissions (operations)

OPERATIONS_EXAMPLE = """
authorization {
  users = [
    {user: busgate, password: gw-secret, permissions: {
      publish: {allow: [">"]}
      subscribe: {allow: [">"]}
    }}
    {user: svc-data, password: svc-secret, permissions: {
      publish: {allow: [">"], deny: ["t.>", "_INBOX.>", "$JS.>", "_BUSGATE.>"]}
      subscribe: {allow: ["svc.data.>", "_INBOX.>"], deny: ["_INBOX.gw-perm.>"]}
      allow_responses: true
    }}
  ]
}
"""


def test_the_documented_permissions_keep_tenant_namespaces_to_the_gateway(nats, start_gateway, clients, tmp_path):
    conf = tmp_path / "nats.conf"
    conf.write_text(OPERATIONS_EXAMPLE)
    ns = nats(extra=["-c", str(conf)])
    cfg = gateway_config([ns.url], "gw-perm").replace(
        "bus: {kind: nats,", 'bus: {kind: nats, user: "busgate", password: "gw-secret",')
    g = start_gateway(cfg)
    c = clients(g.client())
    c.sub(1, "orders.>")
    svc = RawNats(port_of(ns), "svc-data", "svc-secret")
    svc.sub("svc.data.>", 1)
    # The service answers a tenant's request (service import data.> → svc.data.>) ...
    c.send(REQ, 1, "data.query", b"q")
    req = svc.wait_msgs(lambda m: m[0] == "svc.data.query")[0]
    assert re.fullmatch(r"_INBOX\.gw-perm\.[0-9A-Za-z]{11}", req[1])
    assert b"busgate-tenant: demo" in req[2]
    svc.pub(req[1], b"answer")
    assert c.expect(RES)[1:4] == [1, 0, b"answer"]
    # ... but cannot publish into a tenant namespace (with a forged busgate-tenant) ...
    svc.pub("t.demo.orders.new", b"forged", headers=b"NATS/1.0\r\nbusgate-tenant: demo\r\n\r\n")
    # ... nor into a gateway inbox it was not given, nor answer a request twice.
    c.send(REQ, 2, "data.slow", b"q", None, 500)
    req2 = svc.wait_msgs(lambda m: m[0] == "svc.data.slow")[0]
    guess = "_INBOX.gw-perm." + token_text((token_value(req2[1].rsplit(".", 1)[1]) + 1) % 2**64)
    svc.pub(guess, b"forged")
    svc.pub(req[1], b"again")
    # ... nor drive the gateways' admin API on the bus
    svc.pub("_BUSGATE.admin.all.refusal", b"{}")
    svc.flush()
    assert c.expect(RES, timeout=3)[1:3] == [2, E["REQUEST_TIMEOUT"]]
    assert not c.drain(MSG, quiet=0.3), "a message from the service reached the tenant namespace"
    for subject in ("t.demo.orders.new", guess, req[1], "_BUSGATE.admin.all.refusal"):
        assert any(f'Permissions Violation for Publish to "{subject}"' in e for e in svc.errors), svc.errors
    # Its own subscription to the gateway's inbox is refused.
    svc.send(b"SUB _INBOX.gw-perm.> 9\r\n")
    svc.flush()
    assert any("Permissions Violation for Subscription to \"_INBOX.gw-perm.>\"" in e for e in svc.errors), svc.errors
    svc.close()
