"""Failed authentications are throttled per remote address (docs/operations.md, "Authentication
throttle"): after a burst of wrong tokens an address gets ERR AUTH_FAILED (fatal) at HELLO whose
message says when to try again, even with a valid token, until its budget comes back; other
addresses are not slowed. Client-supplied text cannot forge log lines."""
import math
import re
import socket
import time

from rawgw import ERR, HELLO, WELCOME, E, RawClient

TOKEN = "throttle-token-1"
BURST, PER_SEC = 5, 2.0
CONFIG = f"""
limits:
  auth_failures_burst: {BURST}
  auth_failures_per_sec: {PER_SEC}
tenants:
  - name: acme
    tokens: ["{TOKEN}"]
"""


class BoundClient(RawClient):
    """A RawClient whose socket is bound to a chosen local address (127.0.0.x are all loopback)."""

    def __init__(self, addr, source, timeout=5.0):
        self.sock = socket.create_connection(addr, timeout=timeout, source_address=(source, 0))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.backlog = []
        self.welcome = None


def attempt(g, token, source="127.0.0.1"):
    """One connection and one HELLO from `source`: the frame that answered it. An ERR must be fatal:
    the gateway closes the connection after it."""
    c = BoundClient(g.tcp, source)
    try:
        c.send(HELLO, [1], {"method": "token", "token": token}, "throttle-test")
        f = c.recv()
        if f[0] == ERR:
            assert len(f) > 3 and f[3] == HELLO, f"an ERR at HELLO names HELLO as ref_op: {f!r}"
            c.expect_closed()
        return f
    finally:
        c.close()


def metric(g, name):
    """The value of a counter on GET /metrics (summed over its series), or None when it is absent."""
    status, text = g.http_get("/metrics")
    assert status == 200
    values = re.findall(rf"^{name}(?:{{[^}}]*}})?\s+(\S+)\s*$", text, re.M)
    return sum(float(v) for v in values) if values else None


THROTTLED = "throttled"  # AUTH_FAILED without the token being looked at


def kind(f):
    """AUTH_FAILED for a wrong token, or THROTTLED: the address spent its budget (the message says
    so and names the time to wait; the code is AUTH_FAILED, fatal, for every client)."""
    assert f[0] == ERR and f[1] == E["AUTH_FAILED"], f
    return THROTTLED if "too many failed authentications" in f[2] else E["AUTH_FAILED"]


def retry_seconds(message):
    """The retry time a throttled HELLO's message names, in seconds."""
    m = re.search(r"(\d+(?:\.\d+)?)\s*(ms|s|sec|secs|seconds?)\b", message)
    assert m, f"the message does not say when to retry: {message!r}"
    return float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)


def test_wrong_tokens_throttle_their_address_only(start_gateway):
    g = start_gateway(CONFIG)
    failures_before = metric(g, "busgate_auth_failures_total") or 0
    throttled_before = metric(g, "busgate_auth_throttled_total") or 0
    codes = []

    start = time.monotonic()
    for _ in range(30):
        f = attempt(g, "not-the-token")
        assert f[0] == ERR, f"a wrong token was accepted: {f!r}"
        codes.append(kind(f))
        if codes[-1] == THROTTLED:
            wait = retry_seconds(f[2])
            # A token comes back within 1 / PER_SEC s (the message may round up to whole seconds).
            assert 0 <= wait <= math.ceil(1 / PER_SEC), f[2]
    elapsed = time.monotonic() - start

    assert codes[:BURST] == [E["AUTH_FAILED"]] * BURST
    assert set(codes) <= {E["AUTH_FAILED"], THROTTLED}
    # The budget: the burst, plus what came back while the attempts went on.
    assert codes.count(E["AUTH_FAILED"]) <= BURST + PER_SEC * elapsed + 1, (codes, elapsed)
    assert THROTTLED in codes, (codes, elapsed)

    # A valid token from the throttled address is refused too: the address is not told whether the
    # token was right. (If the machine stalled long enough for a token to come back, the valid token
    # is accepted: spend the token with a wrong one and try again.)
    refused = None
    for _ in range(5):
        f = attempt(g, TOKEN)
        if f[0] == ERR:
            refused = f
            break
        assert f[0] == WELCOME
        codes.append(kind(attempt(g, "not-the-token")))
    assert refused is not None, "a valid token from a throttled address was accepted every time"
    assert kind(refused) == THROTTLED, refused
    codes.append(THROTTLED)
    last_failure = time.monotonic()

    # Another address is not slowed: a valid token is accepted at once, a wrong one gets AUTH_FAILED.
    other = attempt(g, TOKEN, source="127.0.0.2")
    assert other[0] == WELCOME, other
    assert other[4] == "acme"
    f = attempt(g, "not-the-token", source="127.0.0.2")
    assert f[0] == ERR and kind(f) == E["AUTH_FAILED"], f
    codes.append(kind(f))

    # A token comes back every 1 / PER_SEC s: after a second the valid token is accepted again.
    time.sleep(max(0.0, last_failure + 1.0 - time.monotonic()))
    f = attempt(g, TOKEN)
    assert f[0] == WELCOME, f

    failures = metric(g, "busgate_auth_failures_total")
    throttled = metric(g, "busgate_auth_throttled_total")
    assert failures is not None and throttled is not None, "the throttle's counters are not on /metrics"
    assert failures - failures_before == codes.count(E["AUTH_FAILED"])
    assert throttled - throttled_before == codes.count(THROTTLED)


def test_a_client_name_cannot_forge_a_log_line(start_gateway):
    g = start_gateway(CONFIG)
    c = RawClient(g.tcp)
    c.hello(TOKEN, name="probe\n2026-01-01 info forged")
    c.close()
    line = g.wait_log(r"connection open .*probe")
    assert "probe\\n2026-01-01 info forged" in line  # escaped, on the line it belongs to
    g.wait_log(r"connection closed .*tenant=acme")
    assert [ln for ln in g.log_lines if "forged" in ln] == [line]
    assert not [ln for ln in g.log_lines if ln.startswith("2026-01-01 ")]


def test_an_auth_method_cannot_forge_a_log_line(start_gateway):
    # The method named in HELLO is quoted in the close reason that the gateway logs.
    g = start_gateway(CONFIG)
    c = RawClient(g.tcp)
    c.send(HELLO, [1], {"method": "x\n2026-01-01 info forged", "token": TOKEN}, "probe")
    assert c.expect_err("AUTH_METHOD_UNSUPPORTED")
    c.expect_closed()
    c.close()
    line = g.wait_log(r"connection closed .*AUTH_METHOD_UNSUPPORTED")
    assert "x\\n2026-01-01 info forged" in line
    assert [ln for ln in g.log_lines if "forged" in ln] == [line]
    assert not [ln for ln in g.log_lines if ln.startswith("2026-01-01 ")]
