"""Two tenants on one gateway cannot see each other's traffic, whatever subjects they use."""
from rawgw import MSG, PUB, REQ, RES, E, sha

TWO_TENANTS = f"""
tenants:
  - name: alpha
    tokens_sha256: ["{sha('alpha-token-1')}"]
  - name: beta
    tokens: ["beta-token-1"]
"""


def test_full_wildcard_stays_inside_the_tenant(start_gateway, clients):
    g = start_gateway(TWO_TENANTS)
    a = clients(g.client("alpha-token-1"))
    b = clients(g.client("beta-token-1"))
    assert a.welcome[4] == "alpha" and b.welcome[4] == "beta"
    a.sub(1, ">")
    b.sub(1, ">")
    b.sub(2, "t.>")  # a client cannot name the bus namespace either
    b.sub(3, "*.*.>")
    a.pub("orders.new", b"from alpha")
    a.pub("t.beta.orders.new", b"alpha naming beta's bus subject")
    b.pub("orders.new", b"from beta")
    got_a = sorted((f[1], f[2], f[3]) for f in a.drain(MSG))
    assert got_a == [(1, "orders.new", b"from alpha"), (1, "t.beta.orders.new", b"alpha naming beta's bus subject")]
    got_b = b.drain(MSG)
    assert [(f[1], f[2], f[3]) for f in got_b] == [(1, "orders.new", b"from beta")]
    assert got_b[0][4]["busgate-tenant"] == "beta"


def test_requests_do_not_cross_tenants(start_gateway, clients):
    g = start_gateway(TWO_TENANTS)
    a = clients(g.client("alpha-token-1"))
    a.sub(1, "svc.echo")
    b = clients(g.client("beta-token-1"))
    b.send(REQ, 1, "svc.echo", b"?")
    res = b.expect(RES)
    assert res[2] == E["NO_RESPONDERS"]


def test_queue_groups_are_per_tenant(start_gateway, clients):
    g = start_gateway(TWO_TENANTS)
    a = clients(g.client("alpha-token-1"))
    b = clients(g.client("beta-token-1"))
    a.sub(1, "jobs", queue="workers")
    b.sub(1, "jobs", queue="workers")
    pa = clients(g.client("alpha-token-1"))
    for i in range(20):
        pa.pub("jobs", str(i).encode())
    got = [a.expect(MSG)[3] for _ in range(20)]
    assert got == [str(i).encode() for i in range(20)]
    assert b.drain(MSG) == []
