"""Publish/subscribe through the real gateway on the memory bus, over raw TCP frames."""
from rawgw import ERR, MSG, OK, PUB, SUB, UNSUB, E


def test_welcome_announces_limits(gw, clients):
    c = clients(gw.raw())
    w = c.hello(opts={"heartbeat_ms": 200, "lang": "python"})
    _, version, session_id, node_id, tenant, limits = w
    assert version == 1 and tenant == "demo" and len(session_id) == 22 and node_id
    for key in ("max_frame", "max_payload", "heartbeat_ms", "max_subs", "max_inflight", "max_pending",
                "request_timeout_ms", "max_timeout_ms"):
        assert key in limits
    assert limits["heartbeat_ms"] == 200
    assert limits["max_frame"] == limits["max_payload"] + 65536


def test_wildcards_across_connections(gw, clients):
    sub = clients(gw.client())
    pub = clients(gw.client())
    sub.sub(1, "orders.*")
    sub.sub(2, "orders.>")
    sub.sub(3, "orders.eu.created")
    sub.sub(4, "*.eu.*")
    pub.pub("orders.eu.created", b"one")
    pub.pub("orders.us", b"two")
    pub.flush()
    got = {}
    for _ in range(5):
        f = sub.expect(MSG)
        got.setdefault(f[1], []).append((f[2], f[3]))
    assert got == {
        1: [("orders.us", b"two")],
        2: [("orders.eu.created", b"one"), ("orders.us", b"two")],
        3: [("orders.eu.created", b"one")],
        4: [("orders.eu.created", b"one")],
    }


def test_tenant_header_and_client_headers(gw, clients):
    sub = clients(gw.client())
    pub = clients(gw.client())
    sub.sub(1, "h.>")
    pub.pub("h.x", b"p", headers={"trace-id": "abc"})
    f = sub.expect(MSG)
    assert f[4] == {"trace-id": "abc", "busgate-tenant": "demo"}


def test_forged_reserved_header_is_refused_and_never_relayed(gw, clients):
    sub = clients(gw.client())
    pub = clients(gw.client())
    sub.sub(1, "h.>")
    pub.pub("h.x", b"forged", headers={"Busgate-Tenant": "root"}, ack=9)
    err = pub.expect(ERR)
    assert err[1] == E["RESERVED_HEADER"] and err[3:5] == [PUB, 9]
    pub.pub("h.x", b"real")
    f = sub.expect(MSG)
    assert f[3] == b"real" and f[4]["busgate-tenant"] == "demo"


def test_publisher_receives_its_own_messages_and_one_copy_per_sid(gw, clients):
    c = clients(gw.client())
    c.sub(1, "echo")
    c.sub(2, "echo")
    c.pub("echo", b"x")
    sids = sorted(c.expect(MSG)[1] for _ in range(2))
    assert sids == [1, 2]


def test_publish_ack(gw, clients):
    c = clients(gw.client())
    c.pub("acked", b"x", ack=42)
    assert c.expect(OK) == [OK, PUB, 42]


def test_unsub_stops_delivery(gw, clients):
    sub = clients(gw.client())
    pub = clients(gw.client())
    sub.sub(1, "u")
    sub.sub(2, "u.marker")
    sub.send(UNSUB, 1)
    sub.flush()
    pub.pub("u", b"after")
    pub.pub("u.marker", b"m")
    f = sub.expect(MSG)
    assert f[1] == 2  # nothing arrived on sid 1
    sub.send(UNSUB, 77)  # unknown sid: ignored, connection stays fine
    sub.flush()


def test_unsub_after_max_msgs(gw, clients):
    sub = clients(gw.client())
    pub = clients(gw.client())
    sub.sub(1, "limited")
    sub.send(UNSUB, 1, 3)
    sub.flush()
    for i in range(6):
        pub.pub("limited", str(i).encode())
    pub.flush()
    got = [sub.expect(MSG)[3] for _ in range(3)]
    assert got == [b"0", b"1", b"2"]
    sub.sub(2, "limited.done")
    pub.pub("limited.done", b"m")
    assert sub.expect(MSG)[1] == 2  # no 4th message on sid 1
    # the sid is free again
    sub.sub(1, "limited")


def test_queue_group_delivers_each_message_once(gw, clients):
    members = [clients(gw.client()) for _ in range(3)]
    for m in members:
        m.sub(1, "jobs.*", queue="workers")
    watcher = clients(gw.client())
    watcher.sub(9, "jobs.>")
    pub = clients(gw.client())
    n = 300
    for i in range(n):
        pub.pub(f"jobs.{i % 7}", str(i).encode())
    pub.flush()
    assert len([watcher.expect(MSG) for _ in range(n)]) == n
    seen = []
    counts = []
    for m in members:
        got = [f[3] for f in m.drain(MSG)]
        counts.append(len(got))
        seen += got
    assert sorted(seen) == sorted(str(i).encode() for i in range(n))
    assert all(c > 0 for c in counts), counts


def test_large_payload_roundtrip(gw, clients):
    sub = clients(gw.client())
    pub = clients(gw.client())
    sub.sub(1, "big")
    payload = bytes(range(256)) * 4000  # 1,024,000 bytes, under the 1 MiB default
    pub.pub("big", payload)
    f = sub.expect(MSG, timeout=10)
    assert f[3] == payload


def test_subscribe_is_confirmed_and_sid_in_use(gw, clients):
    c = clients(gw.client())
    c.sub(5, "a")
    c.send(SUB, 5, "b")
    err = c.expect(ERR)
    assert err[1] == E["SID_IN_USE"] and err[3:5] == [SUB, 5]
