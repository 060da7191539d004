"""The admin API as an operator uses it on one node: closing a connection and refusing its client
for a while (by name, address or token), listing and lifting refusals, the cluster view on the
memory bus, and `debug_console: false`."""
import json
import time
import urllib.error
import urllib.request

from rawgw import Closed, E, RawClient, sha

ADMIN = "admin-token-1"
CONFIG = f"""
admin: {{token: "{ADMIN}"}}
tenants:
  - name: acme
    tokens_sha256: ["{sha('acme-token')}", "{sha('acme-token-2')}"]
  - name: other
    tokens_sha256: ["{sha('other-token')}"]
"""


def http(g, method, path, body=None, token=ADMIN):
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(f"http://{g.http[0]}:{g.http[1]}{path}", method=method, data=data)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read().decode()
            return r.status, json.loads(text) if text.startswith(("{", "[")) else text
    except urllib.error.HTTPError as e:
        text = e.read().decode()
        return e.code, json.loads(text) if text.startswith("{") else text


def conn_id(g, name):
    _, body = http(g, "GET", "/admin/connections")
    ids = [c["id"] for c in body["connections"] if c["name"] == name]
    assert len(ids) == 1, body
    return ids[0]


def refused(g, token, name):
    """The fatal ERR a HELLO gets, or None when it is welcomed."""
    c = RawClient(g.tcp)
    try:
        c.send(1, [1], {"method": "token", "token": token}, name)
        f = c.recv()
        if f[0] == 2:  # WELCOME
            return None
        return f
    finally:
        c.close()


def test_close_with_refusal_by_name_then_lift_it(start_gateway, clients):
    g = start_gateway(CONFIG)
    c = clients(g.client("acme-token", name="scorer"))
    cid = conn_id(g, "scorer")
    status, body = http(g, "POST", f"/admin/connections/{cid}/close", {"refuse_for_ms": 60000, "by": "name"})
    assert status == 200, body
    assert body["closed"] == cid and body["refusal"]["by"] == "name" and body["refusal"]["value"] == "scorer"
    c.expect_err("CLOSED_BY_ADMIN")
    c.expect_closed()

    err = refused(g, "acme-token", "scorer")
    assert err and err[1] == E["CLOSED_BY_ADMIN"], err
    assert "refused by an operator for another" in err[2] and body["refusal"]["id"] in err[2]
    # Another name of the tenant, and the same name in another tenant, are welcome.
    assert refused(g, "acme-token", "other-program") is None
    assert refused(g, "other-token", "scorer") is None

    status, listed = http(g, "GET", "/admin/refusals")
    assert status == 200
    [r] = listed["refusals"]
    assert r["id"] == body["refusal"]["id"] and r["tenant"] == "acme" and 55000 < r["ms_left"] <= 60000
    assert r["connection"] == cid and r["node"]

    assert http(g, "DELETE", f"/admin/refusals/{r['id']}")[0] == 200
    assert http(g, "GET", "/admin/refusals")[1]["refusals"] == []
    assert refused(g, "acme-token", "scorer") is None
    assert http(g, "DELETE", f"/admin/refusals/{r['id']}")[0] == 404
    _, metrics = g.http_get("/metrics")
    assert "busgate_admin_refused_total 1\n" in metrics


def test_refusal_ends_by_itself(start_gateway, clients):
    g = start_gateway(CONFIG)
    clients(g.client("acme-token", name="brief"))
    status, _ = http(g, "POST", f"/admin/connections/{conn_id(g, 'brief')}/close", {"refuse_for_ms": 600})
    assert status == 200
    assert refused(g, "acme-token", "brief")[1] == E["CLOSED_BY_ADMIN"]
    time.sleep(0.8)
    assert refused(g, "acme-token", "brief") is None
    assert http(g, "GET", "/admin/refusals")[1]["refusals"] == []


def test_refusal_by_address_and_by_token(start_gateway, clients):
    g = start_gateway(CONFIG)
    clients(g.client("acme-token", name="a1"))
    http(g, "POST", f"/admin/connections/{conn_id(g, 'a1')}/close", {"refuse_for_ms": 60000, "by": "token"})
    assert refused(g, "acme-token", "anything")[1] == E["CLOSED_BY_ADMIN"]  # same token, any name
    assert refused(g, "acme-token-2", "a1") is None  # the tenant's other token
    rid = http(g, "GET", "/admin/refusals")[1]["refusals"][0]["id"]
    http(g, "DELETE", f"/admin/refusals/{rid}")

    clients(g.client("other-token", name="o1"))
    status, body = http(g, "POST", f"/admin/connections/{conn_id(g, 'o1')}/close",
                         {"refuse_for_ms": 60000, "by": "address"})
    assert status == 200 and body["refusal"]["value"] == "127.0.0.1"
    # Every tenant from that address is refused: all test clients share 127.0.0.1.
    assert refused(g, "acme-token", "x")[1] == E["CLOSED_BY_ADMIN"]
    # A token that is not accepted still gets AUTH_FAILED: a refusal applies after authentication.
    assert refused(g, "wrong-token", "x")[1] == E["AUTH_FAILED"]


def test_close_requests_that_cannot_apply(start_gateway, clients):
    g = start_gateway(CONFIG)
    c = clients(g.client("acme-token", name=""))
    cid = conn_id(g, "")
    status, body = http(g, "POST", f"/admin/connections/{cid}/close", {"refuse_for_ms": 1000, "by": "session"})
    assert status == 400 and "session resumption" in body["error"]
    assert http(g, "POST", f"/admin/connections/{cid}/close", {"refuse_for_ms": 1000, "by": "name"})[0] == 400
    assert http(g, "POST", f"/admin/connections/{cid}/close", {"refuse_for_ms": -1})[0] == 400
    assert http(g, "POST", f"/admin/connections/{cid}/close", {"refuse": 1})[0] == 400
    assert http(g, "POST", f"/admin/connections/{cid}/close", b"not json")[0] == 400
    c.flush()  # none of them closed it
    assert http(g, "POST", "/admin/connections/999999/close")[0] == 404
    assert http(g, "POST", f"/admin/connections/{cid}/close?node=elsewhere")[0] == 404
    # Without a body: closed, nobody refused; a nameless connection defaults to its address.
    status, body = http(g, "POST", f"/admin/connections/{cid}/close")
    assert status == 200 and "refusal" not in body
    c.expect_err("CLOSED_BY_ADMIN")
    assert refused(g, "acme-token", "") is None


def test_cluster_scope_on_the_memory_bus_is_this_node(start_gateway, clients):
    g = start_gateway(CONFIG)
    c = clients(g.client("acme-token", name="solo"))
    c.sub(1, "jobs.>")
    node = c.welcome[3]
    for view, key in (("connections", "connections"), ("subscriptions", "subscriptions"),
                      ("tenants", "tenants"), ("consumers", "consumers")):
        t0 = time.monotonic()
        status, body = http(g, "GET", f"/admin/{view}?scope=cluster")
        assert status == 200 and time.monotonic() - t0 < 0.4, body  # no wait for other nodes
        assert body["scope"] == "cluster" and [n["node"] for n in body["nodes"]] == [node], body
        assert all(e["node"] == node for e in body[key])
    conns = http(g, "GET", "/admin/connections?scope=cluster")[1]["connections"]
    assert [x["name"] for x in conns] == ["solo"]
    assert http(g, "GET", "/admin/connections?scope=galaxy")[0] == 400
    assert http(g, "GET", "/admin/connections?scope=cluster&wait_ms=0")[0] == 400
    # ?node= naming this node closes locally.
    cid = conns[0]["id"]
    assert http(g, "POST", f"/admin/connections/{cid}/close?node={node}")[0] == 200
    c.expect_err("CLOSED_BY_ADMIN")


def test_debug_console_can_be_turned_off(start_gateway):
    on = start_gateway(CONFIG)
    assert on.http_get("/debug")[0] == 200
    off = start_gateway(CONFIG + "debug_console: false\n")
    status, body = off.http_get("/debug")
    assert status == 404 and "<html" not in body.lower()
    assert off.http_get("/debug/")[0] == 404
    assert off.http_get("/healthz")[0] == 200
