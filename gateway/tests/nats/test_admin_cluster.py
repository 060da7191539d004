"""The admin API across two gateway nodes on one real nats-server: ?scope=cluster merges every
node's view, a connection on the other node can be closed, and a refusal set on one node is
enforced by both."""
import json
import time
import urllib.error
import urllib.request

from natsfix import gateway_config
from rawgw import E, RawClient

ADMIN = "cluster-admin-token"


def http(g, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://{g.http[0]}:{g.http[1]}{path}", method=method, data=data)
    req.add_header("Authorization", f"Bearer {ADMIN}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read().decode())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read().decode())


def hello_answer(g, token, name):
    c = RawClient(g.tcp)
    try:
        c.send(1, [1], {"method": "token", "token": token}, name)
        return c.recv()
    finally:
        c.close()


def eventually(fn, timeout=3.0):
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(0.05)


def two_nodes(nats, start_gateway):
    ns = nats()
    ga = start_gateway(gateway_config([ns.url], "gw-a") + f'admin: {{token: "{ADMIN}"}}\n')
    gb = start_gateway(gateway_config([ns.url], "gw-b") + f'admin: {{token: "{ADMIN}"}}\n')
    for g in (ga, gb):
        eventually(lambda g=g: g.http_get("/readyz")[0] == 200, timeout=10)
    return ga, gb


def test_cluster_views_merge_both_nodes(nats, start_gateway, clients):
    ga, gb = two_nodes(nats, start_gateway)
    a = clients(ga.client("dev-token", name="on-a"))
    b = clients(gb.client("other-token", name="on-b"))
    b.sub(1, "jobs.>")
    status, body = http(ga, "GET", "/admin/connections?scope=cluster&wait_ms=2000")
    assert status == 200, body
    got = sorted((c["node"], c["name"], c["tenant"]) for c in body["connections"])
    assert got == [("gw-a", "on-a", "demo"), ("gw-b", "on-b", "other")], body
    assert sorted(n["node"] for n in body["nodes"]) == ["gw-a", "gw-b"] and body["missing"] == []
    # The node-local view is unchanged.
    local = http(ga, "GET", "/admin/connections")[1]
    assert [c["name"] for c in local["connections"]] == ["on-a"] and "node" not in local["connections"][0]

    subs = http(gb, "GET", "/admin/subscriptions?scope=cluster")[1]
    assert [(s["node"], s["subject"]) for s in subs["subscriptions"]] == [("gw-b", "jobs.>")]
    assert {n["node"] for n in subs["nodes"]} == {"gw-a", "gw-b"}
    tenants = http(ga, "GET", "/admin/tenants?scope=cluster")[1]["tenants"]
    assert sorted((t["node"], t["name"]) for t in tenants) == [
        ("gw-a", "demo"), ("gw-a", "other"), ("gw-b", "demo"), ("gw-b", "other")]
    on_b = [t for t in tenants if t["node"] == "gw-b" and t["name"] == "other"][0]
    assert on_b["connections"]["used"] == 1
    assert http(ga, "GET", "/admin/consumers?scope=cluster")[0] == 200

    # Once both nodes know each other, a cluster view does not wait out wait_ms.
    t0 = time.monotonic()
    assert len(http(ga, "GET", "/admin/connections?scope=cluster&wait_ms=3000")[1]["connections"]) == 2
    assert time.monotonic() - t0 < 1.5
    a.flush()


def test_close_on_another_node_and_refuse_everywhere(nats, start_gateway, clients):
    ga, gb = two_nodes(nats, start_gateway)
    b = clients(gb.client("other-token", name="pest"))
    conns = http(ga, "GET", "/admin/connections?scope=cluster&wait_ms=2000")[1]["connections"]
    [target] = [c for c in conns if c["name"] == "pest"]
    assert target["node"] == "gw-b"

    status, body = http(ga, "POST", f"/admin/connections/{target['id']}/close?node=gw-b",
                        {"refuse_for_ms": 30000, "by": "name"})
    assert status == 200 and body["node"] == "gw-b" and body["refusal"]["node"] == "gw-b", body
    b.expect_err("CLOSED_BY_ADMIN")
    b.expect_closed()
    rid = body["refusal"]["id"]

    # Refused on the node that closed it and, through the bus, on the other one.
    for g in (gb, ga):
        f = eventually(lambda g=g: (lambda x: x if x[0] == 10 else None)(hello_answer(g, "other-token", "pest")))
        assert f and f[1] == E["CLOSED_BY_ADMIN"] and rid in f[2], f
        assert hello_answer(g, "other-token", "someone-else")[0] == 2  # WELCOME
    assert [r["id"] for r in http(ga, "GET", "/admin/refusals")[1]["refusals"]] == [rid]

    # Lifted through node A: both nodes welcome the client again.
    assert http(ga, "DELETE", f"/admin/refusals/{rid}")[0] == 200
    for g in (ga, gb):
        assert eventually(lambda g=g: hello_answer(g, "other-token", "pest")[0] == 2), g
        assert http(g, "GET", "/admin/refusals")[1]["refusals"] == []

    # A connection id the other node does not have, and a node nobody runs.
    assert http(ga, "POST", "/admin/connections/987654/close?node=gw-b")[0] == 404
    t0 = time.monotonic()
    assert http(ga, "POST", "/admin/connections/1/close?node=gw-nobody")[0] == 504
    assert time.monotonic() - t0 < 4


def test_a_stopped_node_is_reported_missing(nats, start_gateway, clients):
    ga, gb = two_nodes(nats, start_gateway)
    assert len(http(ga, "GET", "/admin/connections?scope=cluster&wait_ms=2000")[1]["nodes"]) == 2
    gb.stop()
    t0 = time.monotonic()
    status, body = http(ga, "GET", "/admin/connections?scope=cluster&wait_ms=300")
    assert status == 200 and body["missing"] == ["gw-b"] and [n["node"] for n in body["nodes"]] == ["gw-a"]
    assert 0.25 < time.monotonic() - t0 < 2
    # Not known any more: the next view lists it nowhere.
    assert http(ga, "GET", "/admin/connections?scope=cluster&wait_ms=300")[1]["missing"] == []
