"""Request/reply through the gateway: replies, timeouts, no responders, the in-flight cap, imports."""
import threading

import pytest

from rawgw import ERR, MSG, PUB, REQ, RES, E, RawClient, bus_config, sha

SVC_CONFIG = f"""
timeouts: {{request_ms: 300, max_request_ms: 2000}}
tenants:
  - name: acme
    tokens_sha256: ["{sha('acme-token-1')}"]
    imports:
      - {{kind: service, from: "data.>", to: "svc.data.>"}}
    limits: {{max_inflight_requests: 3}}
  - name: datasvc
    tokens_sha256: ["{sha('datasvc-token-1')}"]
    imports:
      - {{kind: stream, from: "serve.>", to: "svc.data.>"}}
"""


def responder(client, sid, subject, answer=lambda p: b"re:" + p, queue=None):
    client.sub(sid, subject, queue=queue)

    def loop():
        while True:
            try:
                f = client.expect(MSG, timeout=10)
            except Exception:
                return
            client.pub(f[5], answer(f[3]), headers={"served-by": "responder"})

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


def test_request_reply(gw, clients):
    responder(clients(gw.client()), 1, "svc.echo")
    c = clients(gw.client())
    c.send(REQ, 7, "svc.echo", b"ping")
    res = c.expect(RES)
    assert res[1:4] == [7, 0, b"re:ping"]
    assert res[4] == {"served-by": "responder", "busgate-tenant": "demo"}


def test_many_concurrent_requests_are_matched_by_id(gw, clients):
    responder(clients(gw.client()), 1, "svc.echo")
    c = clients(gw.client())
    for i in range(1, 101):
        c.send(REQ, i, "svc.echo", str(i).encode())
    got = {}
    for _ in range(100):
        res = c.expect(RES)
        got[res[1]] = res[3]
    assert got == {i: b"re:" + str(i).encode() for i in range(1, 101)}


def test_no_responders(gw, clients):
    c = clients(gw.client())
    c.send(REQ, 1, "nobody.home", b"?")
    res = c.expect(RES)
    assert res[1] == 1 and res[2] == E["NO_RESPONDERS"]


def test_timeout(gw, clients):
    silent = clients(gw.client())
    silent.sub(1, "svc.silent")
    c = clients(gw.client())
    c.send(REQ, 1, "svc.silent", b"?", None, 150)
    res = c.expect(RES, timeout=3)
    assert res[1] == 1 and res[2] == E["REQUEST_TIMEOUT"]
    # a late reply is dropped, and the connection keeps working
    f = silent.expect(MSG)
    silent.pub(f[5], b"late")
    c.flush()
    c.send(REQ, 2, "svc.silent", b"?", None, 100)
    assert c.expect(RES)[2] == E["REQUEST_TIMEOUT"]


def test_duplicate_request_id(gw, clients):
    silent = clients(gw.client())
    silent.sub(1, "svc.silent")
    c = clients(gw.client())
    c.send(REQ, 5, "svc.silent", b"a", None, 500)
    c.send(REQ, 5, "svc.silent", b"b", None, 500)
    first = c.expect(RES)
    assert first[1] == 5 and first[2] == E["DUPLICATE_REQUEST_ID"]
    second = c.expect(RES, timeout=3)
    assert second[1] == 5 and second[2] == E["REQUEST_TIMEOUT"]


def test_request_errors_come_back_as_res(gw, clients):
    c = clients(gw.client())
    c.send(REQ, 1, "svc.*", b"")
    assert c.expect(RES)[1:3] == [1, E["WILDCARD_NOT_ALLOWED"]]
    c.send(REQ, 2, "$SYS.x", b"")
    assert c.expect(RES)[1:3] == [2, E["RESERVED_SUBJECT"]]
    c.send(REQ, 3, "svc.x", b"", {"busgate-tenant": "x"})
    assert c.expect(RES)[1:3] == [3, E["RESERVED_HEADER"]]


def test_inflight_cap_across_connections(start_gateway, clients):
    g = start_gateway(SVC_CONFIG)
    svc = clients(g.client("datasvc-token-1"))
    held = []
    svc.sub(1, "serve.>")
    a = clients(g.client("acme-token-1"))
    b = clients(g.client("acme-token-1"))
    a.send(REQ, 1, "data.q", b"1", None, 2000)
    a.send(REQ, 2, "data.q", b"2", None, 2000)
    b.send(REQ, 1, "data.q", b"3", None, 2000)
    for _ in range(3):
        held.append(svc.expect(MSG))
    # the tenant has 3 in flight (its cap): the 4th is refused at once, on either connection
    b.send(REQ, 2, "data.q", b"4", None, 2000)
    res = b.expect(RES)
    assert res[1:3] == [2, E["TOO_MANY_REQUESTS"]]
    # answering one frees a slot
    m = held.pop(0)
    svc.pub(m[5], b"answer")
    done = (a if m[3] in (b"1", b"2") else b).expect(RES)
    assert done[2] == 0 and done[3] == b"answer"
    b.send(REQ, 3, "data.q", b"5", None, 2000)
    m5 = svc.expect(MSG)
    assert m5[3] == b"5"


def test_import_reaches_shared_service_with_tenant_header(start_gateway, clients):
    g = start_gateway(SVC_CONFIG)
    svc = clients(g.client("datasvc-token-1"))
    svc.sub(1, "serve.>")
    acme = clients(g.client("acme-token-1"))
    acme.send(REQ, 1, "data.users.get", b"id=7")
    m = svc.expect(MSG)
    # the service sees the request under its own mapping and the requesting tenant in the header
    assert m[2] == "serve.users.get" and m[3] == b"id=7" and m[4]["busgate-tenant"] == "acme"
    assert m[5].startswith("_INBOX.")
    svc.pub(m[5], b"user 7")
    res = acme.expect(RES)
    assert res[1:4] == [1, 0, b"user 7"]
    assert res[4]["busgate-tenant"] == "datasvc"
    # the reply grant was used up: a second PUB to the same inbox is refused
    svc.pub(m[5], b"again", ack=3)
    err = svc.expect(ERR)
    assert err[1] == E["PERMISSION_DENIED"] and err[3:5] == [PUB, 3]


def test_reply_to_a_plain_publish(gw, clients):
    requester = clients(gw.client())
    requester.sub(1, "replies.me")
    worker = clients(gw.client())
    worker.sub(1, "work")
    requester.pub("work", b"job", reply_to="replies.me")
    m = worker.expect(MSG)
    assert m[5] == "replies.me"
    worker.pub(m[5], b"done")
    assert requester.expect(MSG)[3] == b"done"


@pytest.fixture(params=["memory", "nats"])
def bus_section(request):
    with bus_config(request.param) as section:
        yield section


def test_next_request_on_seeing_the_reply_is_never_refused(start_gateway, clients, bus_section):
    """A reply is written from the thread it arrives on (the bus link's, or the responder's): the
    request's in-flight slot and its req_id must be free by the time the client reads the RES. With
    the tenant's cap (3) otherwise full, a client that sends its next request, with the same req_id,
    the moment each RES arrives is never refused."""
    g = start_gateway(bus_section + "\n" + SVC_CONFIG)
    svc = clients(g.client("datasvc-token-1"))
    responder(svc, 1, "serve.echo.>")
    holder = clients(g.client("datasvc-token-1"))
    holder.sub(2, "serve.hold.>")  # takes two requests and never answers them
    a = clients(g.client("acme-token-1"))
    a.send(REQ, 100, "data.hold.1", b"h1", None, 2000)
    a.send(REQ, 101, "data.hold.2", b"h2", None, 2000)
    holder.expect(MSG)
    holder.expect(MSG)
    for i in range(300):
        a.send(REQ, 1, "data.echo.x", str(i).encode(), None, 2000)
        res = a.expect(RES)
        assert res[1:4] == [1, 0, b"re:" + str(i).encode()], res


def test_a_reply_above_the_requesters_max_frame_is_answered_payload_too_large(start_gateway, clients, bus_section):
    """A reply is written from the thread it arrives on only when it fits the requester's max_frame;
    a larger one becomes RES PAYLOAD_TOO_LARGE, and the connection goes on."""
    g = start_gateway(bus_section + "\n" + SVC_CONFIG)
    svc = clients(g.client("datasvc-token-1"))
    responder(svc, 1, "serve.echo.>", answer=lambda p: p * 10000)
    a = clients(rawgw_client(g, "acme-token-1", {"max_frame": 65536}))
    a.send(REQ, 1, "data.echo.x", b"0123456789", None, 2000)
    res = a.expect(RES)
    assert res[1:3] == [1, E["PAYLOAD_TOO_LARGE"]], res
    assert b"above max_frame" in res[3]  # the status message
    a.send(REQ, 2, "data.echo.x", b"ok", None, 2000)  # a reply that fits still arrives
    assert a.expect(RES)[1:4] == [2, 0, b"ok" * 10000]


def rawgw_client(g, token, opts):
    c = RawClient(g.tcp)
    c.hello(token, opts=opts)
    return c
