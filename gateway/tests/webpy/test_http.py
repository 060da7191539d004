"""The HTTP listener: health, readiness, Prometheus metrics and the admin API."""
import json
import re
import time
import urllib.error
import urllib.request

from natsfix import gateway_config
from rawgw import ERR, MSG, REQ, RES, E

ADMIN = "admin-token-1"
CONFIG = f"""
admin: {{token: "{ADMIN}"}}
tenants:
  - name: acme
    tokens: ["acme-token-1"]
    limits: {{max_inflight_requests: 7, max_connections: 5}}
  - name: beta
    tokens: ["beta-token-1"]
"""


def http(g, method, path, token=None):
    req = urllib.request.Request(f"http://{g.http[0]}:{g.http[1]}{path}", method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(text, metric_name, **labels):
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+)(\{[^}]*\})? (\S+)$", line)
        if m and m.group(1) == metric_name and (m.group(2) or "{}")[1:-1] == want:
            return float(m.group(3))
    raise AssertionError(f"metric {metric_name}{{{want}}} not found")


def test_metrics_after_known_traffic(start_gateway, clients):
    g = start_gateway(CONFIG)
    a = clients(g.client("acme-token-1"))
    b = clients(g.client("acme-token-1"))
    clients(g.client("beta-token-1"))
    a.sub(1, "m.>")
    a.sub(2, "svc.echo")
    for i in range(10):
        b.pub("m.x", b"12345")
    for _ in range(10):
        a.expect(MSG)
    b.send(REQ, 1, "nobody", b"?")
    assert b.expect(RES)[2] == E["NO_RESPONDERS"]
    b.send(REQ, 2, "svc.echo", b"ping")
    m = a.expect(MSG)
    a.pub(m[5], b"pong")
    assert b.expect(RES)[3] == b"pong"
    b.pub("$SYS.x", b"")
    assert b.expect(ERR)[1] == E["RESERVED_SUBJECT"]
    b.flush()
    status, text = http(g, "GET", "/metrics")
    assert status == 200
    assert metric(text, "busgate_connections", tenant="acme", transport="tcp") == 2
    assert metric(text, "busgate_connections", tenant="beta", transport="tcp") == 1
    # 10 PUB + 2 REQ + the reply PUB ($SYS was refused and is not counted)
    assert metric(text, "busgate_messages_in_total", tenant="acme") == 13
    assert metric(text, "busgate_bytes_in_total", tenant="acme") == 10 * 5 + 1 + 4 + 4
    assert metric(text, "busgate_messages_out_total", tenant="acme") == 11  # 10 MSG + the request MSG
    assert metric(text, "busgate_subscriptions") == 2
    assert metric(text, "busgate_bus_subscriptions") == 2
    assert metric(text, "busgate_requests_total", tenant="acme") == 2
    assert metric(text, "busgate_requests_inflight", tenant="acme") == 0
    assert metric(text, "busgate_request_duration_seconds_count", tenant="acme") == 2
    assert metric(text, "busgate_errors_total", tenant="acme", code="500", name="NO_RESPONDERS") == 1
    assert metric(text, "busgate_errors_total", tenant="acme", code="302", name="RESERVED_SUBJECT") == 1
    assert metric(text, "busgate_slow_consumer_disconnects_total", tenant="acme") == 0
    assert metric(text, "busgate_tenant_requests_inflight", tenant="acme") == 0
    assert "# TYPE busgate_request_duration_seconds histogram" in text


def test_admin_api_requires_the_token(start_gateway, clients):
    g = start_gateway(CONFIG)
    assert http(g, "GET", "/admin/connections")[0] == 401
    assert http(g, "GET", "/admin/connections", token="wrong")[0] == 401
    assert http(g, "POST", "/admin/reload")[0] == 401
    c = clients(g.client("acme-token-1", name="admin-test"))
    c.sub(4, "a.b", queue="q")
    status, body = http(g, "GET", "/admin/connections", token=ADMIN)
    assert status == 200
    conns = json.loads(body)["connections"]
    mine = [x for x in conns if x["name"] == "admin-test"]
    assert len(mine) == 1 and mine[0]["tenant"] == "acme" and mine[0]["transport"] == "tcp"
    assert mine[0]["subscriptions"] == 1
    subs = json.loads(http(g, "GET", "/admin/subscriptions", token=ADMIN)[1])["subscriptions"]
    assert {"sid": 4, "subject": "a.b", "queue": "q", "bus_subject": "t.acme.a.b"}.items() <= subs[0].items()
    tenants = {t["name"]: t for t in json.loads(http(g, "GET", "/admin/tenants", token=ADMIN)[1])["tenants"]}
    assert tenants["acme"]["connections"] == {"used": 1, "limit": 5}
    assert tenants["acme"]["requests_inflight"] == {"used": 0, "limit": 7}
    # close a connection
    status, _ = http(g, "POST", f"/admin/connections/{mine[0]['id']}/close", token=ADMIN)
    assert status == 200
    assert c.expect(ERR)[1] == E["CLOSED_BY_ADMIN"]
    c.expect_closed()
    assert http(g, "POST", "/admin/connections/99999/close", token=ADMIN)[0] == 404
    assert http(g, "POST", "/admin/reload", token=ADMIN) == (200, '{\n  "reloaded": true\n}\n')


def test_admin_api_disabled_without_a_token(start_gateway):
    g = start_gateway("tenants: [{name: a, tokens: [aaaaaaaa]}]\n")
    assert http(g, "GET", "/admin/tenants", token="anything")[0] == 403


def test_readiness_follows_the_bus(nats, start_gateway):
    ns = nats()
    g = start_gateway(gateway_config([ns.url], "gw-ready"))
    assert http(g, "GET", "/readyz") == (200, "ready\n")
    ns.stop()
    deadline = time.monotonic() + 5
    while http(g, "GET", "/readyz")[0] == 200:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert http(g, "GET", "/readyz") == (503, "bus unavailable\n")
    assert http(g, "GET", "/healthz") == (200, "ok\n")
    status, text = http(g, "GET", "/metrics")
    assert "busgate_bus_healthy 0" in text
    ns.start()
    deadline = time.monotonic() + 5
    while http(g, "GET", "/readyz")[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.02)
