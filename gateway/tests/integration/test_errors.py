"""Every error the gateway core produces, as a client on a raw socket sees it (docs/protocol.md §17)."""
import socket
import struct
import time

import pytest

from rawgw import ACK, CREDIT, ERR, HELLO, MSG, NAK, OK, PING, PONG, PUB, REQ, RES, SUB, UNSUB, WELCOME, E


def fatal(c, name):
    err = c.expect_err(name)
    c.expect_closed()
    return err


def test_http_request_on_the_tcp_port_gets_400(gw):
    s = socket.create_connection(gw.tcp, timeout=2)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    t0 = time.monotonic()
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    assert time.monotonic() - t0 < 1.0
    assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"busgate" in data


def test_tls_hello_on_the_plain_port_gets_an_alert(gw):
    s = socket.create_connection(gw.tcp, timeout=2)
    s.sendall(bytes.fromhex("16030100a5010000a10303") + b"\x00" * 40)
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    assert data == bytes.fromhex("15030100020228")


def test_tls_client_fails_fast(gw):
    import ssl
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    t0 = time.monotonic()
    with pytest.raises(ssl.SSLError):
        with socket.create_connection(gw.tcp, timeout=2) as raw:
            ctx.wrap_socket(raw).close()
    assert time.monotonic() - t0 < 1.0


def test_garbage_gets_not_busgate(gw, clients):
    c = clients(gw.raw())
    c.send_raw(b"\x7fELF\x02\x01\x01")
    err = fatal(c, "NOT_BUSGATE")
    assert err[2] == "not busgate framing"


def test_first_frame_must_be_hello(gw, clients):
    c = clients(gw.raw())
    c.send(PING)
    fatal(c, "HANDSHAKE_REQUIRED")


def test_unsupported_version(gw, clients):
    c = clients(gw.raw())
    c.send(HELLO, [2, 3], {"method": "token", "token": "dev-token"})
    err = fatal(c, "UNSUPPORTED_VERSION")
    assert "1" in err[2]


def test_auth_method_and_token(gw, clients):
    c = clients(gw.raw())
    c.send(HELLO, [1], {"method": "kerberos"})
    fatal(c, "AUTH_METHOD_UNSUPPORTED")
    c = clients(gw.raw())
    c.send(HELLO, [1], {"method": "token", "token": "wrong"})
    fatal(c, "AUTH_FAILED")
    c = clients(gw.raw())
    c.send(HELLO, [1], {"method": "token"})
    fatal(c, "AUTH_FAILED")


def test_handshake_timeout(start_gateway, clients):
    g = start_gateway(f"timeouts: {{handshake_ms: 200}}\ntenants: [{{name: demo, tokens: [dev-token-1]}}]\n")
    c = clients(g.raw())
    t0 = time.monotonic()
    fatal(c, "HANDSHAKE_TIMEOUT")
    assert time.monotonic() - t0 < 2


def test_prehandshake_frame_limit(gw, clients):
    c2 = clients(gw.raw())
    c2.send_raw(struct.pack(">I", 70000))
    fatal(c2, "NOT_BUSGATE")  # a first length above 65535 is not busgate framing


def test_frame_too_large_after_welcome(gw, clients):
    c = clients(gw.client())
    limit = c.welcome[5]["max_frame"]
    c.send_raw(struct.pack(">I", limit + 1))
    fatal(c, "FRAME_TOO_LARGE")


def test_zero_length_and_malformed_frames_are_fatal(gw, clients):
    c = clients(gw.client())
    c.send_raw(b"\x00\x00\x00\x00")
    fatal(c, "MALFORMED_FRAME")
    c = clients(gw.client())
    c.send_raw(b"\x00\x00\x00\x01\xc1")
    fatal(c, "MALFORMED_FRAME")
    c = clients(gw.client())
    c.send(PUB, "a", "text-not-bin")
    err = fatal(c, "MALFORMED_FRAME")
    assert "payload" in err[2]


def test_nonfatal_errors_keep_the_connection(gw, clients):
    c = clients(gw.client())
    c.send(99, "future")
    assert c.expect(ERR)[1:2] == [E["UNKNOWN_OP"]]
    c.send(MSG, 1, "x", b"")
    assert c.expect(ERR)[1] == E["UNEXPECTED_OP"]
    c.send(HELLO, [1], {"method": "token", "token": "dev-token"})
    assert c.expect(ERR)[1] == E["UNEXPECTED_OP"]
    cases = [
        ((PUB, "a..b", b"", None, None, 1), "INVALID_SUBJECT"),
        ((PUB, "a.*", b"", None, None, 2), "WILDCARD_NOT_ALLOWED"),
        ((PUB, "a", b"", None, "r.>", 3), "WILDCARD_NOT_ALLOWED"),
        ((PUB, "$SYS.x", b"", None, None, 4), "RESERVED_SUBJECT"),
        ((PUB, "a", b"", {"bad key": "v"}, None, 5), "INVALID_HEADER"),
        ((PUB, "a", b"", {"busgate-x": "v"}, None, 6), "RESERVED_HEADER"),
        ((PUB, "_INBOX.nope", b"", None, None, 7), "PERMISSION_DENIED"),
    ]
    for fields, name in cases:
        c.send(*fields)
        err = c.expect(ERR)
        assert err[1] == E[name] and err[3:5] == [PUB, fields[-1]], (fields, err)
    for sid, fields, name in [
        (11, (SUB, 11, "a b"), "INVALID_SUBJECT"),
        (12, (SUB, 12, "$JS.>"), "RESERVED_SUBJECT"),
        (13, (SUB, 13, "a", "bad.queue"), "INVALID_QUEUE"),
        (14, (SUB, 14, "a", None, {"durable": "d1", "colour": "red"}), "NOT_SUPPORTED"),
        (15, (SUB, 15, "a", None, {"durable": "d1"}), "UNKNOWN_STREAM"),
        (16, (SUB, 16, "a", None, {"durable": 7}), "INVALID_OPTION"),
    ]:
        c.send(*fields)
        err = c.expect(ERR)
        assert err[1] == E[name] and err[3:5] == [SUB, sid], (fields, err)
    for op in (ACK, NAK, 17, 18):  # no such durable subscription (docs/protocol.md section 16)
        c.send(op, 1, 1)
        err = c.expect(ERR)
        assert err[1] == E["UNKNOWN_SID"] and err[3:5] == [op, 1], err
    c.send(CREDIT, 1, 10)
    assert c.expect(ERR)[1] == E["UNKNOWN_SID"]
    assert c.flush() == [PONG]


def test_payload_too_large_is_not_fatal(start_gateway, clients):
    g = start_gateway("tenants: [{name: demo, tokens: [dev-token-1], limits: {max_payload: 1000}}]\n")
    c = clients(g.client("dev-token-1"))
    assert c.welcome[5]["max_payload"] == 1000
    c.pub("a", b"x" * 1001, ack=1)
    err = c.expect(ERR)
    assert err[1] == E["PAYLOAD_TOO_LARGE"] and err[3:5] == [PUB, 1]
    c.send(REQ, 2, "a", b"x" * 1001)
    assert c.expect(RES)[1:3] == [2, E["PAYLOAD_TOO_LARGE"]]
    c.pub("a", b"x" * 1000, ack=3)
    assert c.expect(OK) == [OK, PUB, 3]


def test_permissions(start_gateway, clients):
    g = start_gateway("""
tenants:
  - name: demo
    tokens: [dev-token-1]
    permissions:
      publish: {allow: ["orders.>"], deny: ["orders.blocked.>"]}
      subscribe: {allow: ["orders.>", "public.*"], deny: ["orders.secret.>"]}
      request: ["svc.allowed"]
""")
    c = clients(g.client("dev-token-1"))
    c.pub("billing.x", b"", ack=1)
    assert c.expect(ERR)[1] == E["PERMISSION_DENIED"]
    c.pub("orders.blocked.x", b"", ack=2)
    assert c.expect(ERR)[1] == E["PERMISSION_DENIED"]
    c.pub("orders.x", b"", ack=3)
    assert c.expect(OK) == [OK, PUB, 3]
    c.send(SUB, 1, ">")
    assert c.expect(ERR)[1:2] == [E["PERMISSION_DENIED"]]
    c.send(SUB, 2, "orders.secret.>")
    assert c.expect(ERR)[1:2] == [E["PERMISSION_DENIED"]]
    c.send(REQ, 3, "svc.other", b"")
    assert c.expect(RES)[1:3] == [3, E["PERMISSION_DENIED"]]
    # orders.> is allowed, but deliveries of denied subjects are filtered out
    c.sub(4, "orders.>")
    p = clients(g.client("dev-token-1"))
    p.pub("orders.secret.b", b"filtered")
    p.pub("orders.a", b"delivered")
    assert c.expect(MSG)[3] == b"delivered"


def test_subscription_limit(start_gateway, clients):
    g = start_gateway("tenants: [{name: demo, tokens: [dev-token-1], limits: {max_subscriptions: 3}}]\n")
    c = clients(g.client("dev-token-1"))
    for sid in (1, 2, 3):
        c.sub(sid, f"s.{sid}")
    c.send(SUB, 4, "s.4")
    err = c.expect(ERR)
    assert err[1] == E["TOO_MANY_SUBSCRIPTIONS"] and err[3:5] == [SUB, 4]
    c.send(UNSUB, 1)  # frees a slot
    c.sub(4, "s.4")


def test_connection_limit(start_gateway, clients):
    g = start_gateway("tenants: [{name: demo, tokens: [dev-token-1], limits: {max_connections: 2}}]\n")
    a = clients(g.client("dev-token-1"))
    clients(g.client("dev-token-1"))
    c = clients(g.raw())
    c.send(HELLO, [1], {"method": "token", "token": "dev-token-1"})
    fatal(c, "TOO_MANY_CONNECTIONS")
    a.close()
    # the slot is free once the gateway has seen the close
    deadline = time.monotonic() + 5
    while True:
        c = clients(g.raw())
        c.send(HELLO, [1], {"method": "token", "token": "dev-token-1"})
        f = c.recv()
        if f[0] == WELCOME:
            break
        assert f[1] == E["TOO_MANY_CONNECTIONS"] and time.monotonic() < deadline
        time.sleep(0.02)


def test_publish_rate_limit(start_gateway, clients):
    g = start_gateway("tenants: [{name: demo, tokens: [dev-token-1], limits: {publish_msgs_per_sec: 20}}]\n")
    c = clients(g.client("dev-token-1"))
    t0 = time.monotonic()
    for i in range(1, 41):
        c.pub("r", b"x", ack=i)
    oks = errs = 0
    for _ in range(40):
        f = c.recv()
        if f[0] == OK:
            oks += 1
        else:
            assert f[1] == E["RATE_LIMITED"]
            errs += 1
    elapsed = time.monotonic() - t0
    # the burst is one second's worth (20); the bucket refills at 20/s while we send
    assert 20 <= oks <= 20 + int(20 * elapsed) + 1 and errs == 40 - oks
    time.sleep(0.5)  # the bucket refills at 20/s
    c.pub("r", b"x", ack=99)
    assert c.expect(OK) == [OK, PUB, 99]


def test_idle_timeout(start_gateway, clients):
    g = start_gateway("timeouts: {heartbeat_ms: 100, min_heartbeat_ms: 50}\n"
                      "tenants: [{name: demo, tokens: [dev-token-1]}]\n")
    c = clients(g.raw())
    c.send(HELLO, [1], {"method": "token", "token": "dev-token-1"})
    assert c.recv()[0] == WELCOME
    assert c.recv(timeout=2)[0] == PING  # silence → PING ...
    err = c.expect(ERR, timeout=2)  # ... more silence → IDLE_TIMEOUT
    assert err[1] == E["IDLE_TIMEOUT"]
    c.expect_closed()


def test_answering_pings_keeps_the_connection(start_gateway, clients):
    g = start_gateway("timeouts: {heartbeat_ms: 100, min_heartbeat_ms: 50}\n"
                      "tenants: [{name: demo, tokens: [dev-token-1]}]\n")
    c = clients(g.client("dev-token-1"))
    pings = 0
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            f = c.recv(timeout=0.3)
        except TimeoutError:
            continue
        assert f[0] == PING
        pings += 1
        c.send(PONG)
    assert pings >= 3
    assert c.flush() == [PONG]


def test_other_clients_unaffected_by_a_bad_one(gw, clients):
    good = clients(gw.client())
    good.sub(1, "ok")
    bad = clients(gw.client())
    bad.send_raw(b"\x00\x00\x00\x03\x93\xc1\xc1")
    fatal(bad, "MALFORMED_FRAME")
    p = clients(gw.client())
    p.pub("ok", b"still here")
    assert good.expect(MSG)[3] == b"still here"


def test_replies_are_not_rate_limited(start_gateway, clients):
    g = start_gateway("tenants: [{name: demo, tokens: [dev-token-1], limits: {publish_msgs_per_sec: 1}}]\n")
    responder = clients(g.client("dev-token-1"))
    responder.sub(1, "svc.echo")
    requester = clients(g.client("dev-token-1"))
    responder.pub("use.up.the.bucket", b"", ack=1)
    assert responder.expect(OK) == [OK, PUB, 1]
    for i in range(1, 4):
        requester.send(REQ, i, "svc.echo", str(i).encode())
        m = responder.expect(MSG)
        responder.pub(m[5], b"re:" + m[3], ack=10 + i)
        assert responder.expect(OK) == [OK, PUB, 10 + i]
        assert requester.expect(RES)[1:4] == [i, 0, b"re:" + str(i).encode()]
