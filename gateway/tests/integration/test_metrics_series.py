"""/metrics as an operator alerts on it: every series docs/operations.md lists is there (the doc's
tables are parsed, so the two cannot drift), and the values move as real traffic from two tenants
says (per-tenant requests, latency histograms, errors by tenant and name, process metrics)."""
import pathlib
import re
import time

from rawgw import ERR, MSG, PUB, REQ, RES, E, RawClient, sha

ROOT = pathlib.Path(__file__).resolve().parents[3]
OPERATIONS = ROOT / "docs" / "operations.md"

MAX_REQUEST_MS = 45000  # not on the bucket ladder: the top finite bucket must be exactly this

CONFIG = f"""
timeouts: {{request_ms: 2000, max_request_ms: {MAX_REQUEST_MS}}}
tenants:
  - name: alpha
    tokens_sha256: ["{sha('alpha-token')}"]
  - name: beta
    tokens_sha256: ["{sha('beta-token')}"]
    permissions:
      publish: {{allow: [">"], deny: ["secret.>"]}}
"""

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text):
    """{name: type} from the TYPE lines, and [(name, {labels}, value)] for every sample."""
    types, samples = {}, []
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert name not in types, f"{name} has two TYPE lines"
            types[name] = kind
        elif line and not line.startswith("#"):
            m = SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            labels = dict(LABEL.findall(m.group(2) or ""))
            samples.append((m.group(1), labels, float(m.group(3))))
    return types, samples


def documented_metrics():
    """(name, type, {labels}) for every row of every `| metric |` table in docs/operations.md."""
    rows, in_table, columns = [], False, []
    for line in OPERATIONS.read_text().splitlines():
        if not line.startswith("|"):
            in_table = False
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "metric":
            in_table, columns = True, cells
            continue
        if not in_table or set(cells[0]) <= {"-", " "}:
            continue
        row = dict(zip(columns, cells))
        names = re.findall(r"`((?:busgate|process)_[a-z_]+)`", row["metric"])
        assert names, f"a metrics table row names no metric: {line}"
        kinds = [k.strip() for k in row["type"].split(",")]
        labels = {x.strip() for x in row.get("labels", "").split(",") if x.strip()}
        for i, name in enumerate(names):
            rows.append((name, kinds[min(i, len(kinds) - 1)], labels))
    return rows


def family_samples(samples, name):
    """Samples of a family (histograms: its _bucket, _sum and _count series)."""
    return [s for s in samples if s[0] in (name, name + "_bucket", name + "_sum", name + "_count")]


def value(samples, metric, **labels):
    got = [v for n, lb, v in samples if n == metric and all(lb.get(k) == x for k, x in labels.items())]
    assert len(got) == 1, f"{metric}{labels}: {len(got)} samples"
    return got[0]


def responder(c, sid, subject):
    c.sub(sid, subject)
    return c


def answer_one(c):
    f = c.expect(MSG)
    c.pub(f[5], b"re:" + f[3])


def run_traffic(g, clients):
    a_sub = clients(g.client("alpha-token", name="alpha-sub"))
    a_sub.sub(1, "orders.>")
    a_svc = clients(g.client("alpha-token", name="alpha-svc"))
    a_svc.sub(1, "svc.echo")
    a_svc.sub(2, "svc.silent")  # never answers
    a = clients(g.client("alpha-token", name="alpha-client"))
    for i in range(3):
        a.pub("orders.new", b"o%d" % i)
    for _ in range(3):
        a_sub.expect(MSG)
    for req_id in (1, 2):  # two that succeed
        a.send(REQ, req_id, "svc.echo", b"ping")
        answer_one(a_svc)
        assert a.expect(RES)[2] == 0
    a.send(REQ, 3, "nobody.home", b"?")
    assert a.expect(RES)[2] == E["NO_RESPONDERS"]
    a.send(REQ, 4, "svc.silent", b"?", None, 150)
    assert a.expect(RES, timeout=3)[2] == E["REQUEST_TIMEOUT"]

    b_svc = clients(g.client("beta-token", name="beta-svc"))
    b_svc.sub(1, "svc.echo")
    b = clients(g.client("beta-token", name="beta-client"))
    b.send(REQ, 1, "svc.echo", b"ping")
    answer_one(b_svc)
    assert b.expect(RES)[2] == 0
    b.pub("secret.plans", b"x", ack=9)
    assert b.expect(ERR)[1] == E["PERMISSION_DENIED"]

    # An error before authentication: a PUB where HELLO must come first.
    raw = clients(RawClient(g.tcp))
    raw.send(PUB, "x", b"")
    raw.expect_err("HANDSHAKE_REQUIRED")
    raw.expect_closed()
    for c in (a, b, a_sub, a_svc, b_svc):
        c.flush()


def scrape(g):
    status, body = g.http_get("/metrics")
    assert status == 200
    return parse_exposition(body)


def test_documented_series_exist_and_move_with_traffic(start_gateway, clients):
    g = start_gateway(CONFIG)
    run_traffic(g, clients)
    time.sleep(0.05)  # the timed-out request's bookkeeping and the closed raw connection
    types, samples = scrape(g)

    # Every documented metric is exposed with its documented type; its samples carry the documented
    # labels (histogram buckets add `le`).
    documented = documented_metrics()
    assert len(documented) > 40
    for name, kind, labels in documented:
        assert types.get(name) == kind, f"{name}: documented as {kind}, exposed as {types.get(name)}"
        for n, lb, _ in family_samples(samples, name):
            assert set(lb) - {"le"} == labels, f"{n}{lb}: documented labels {sorted(labels)}"
    for name in ("busgate_requests_total", "busgate_requests_inflight", "busgate_slow_consumer_disconnects_total",
                 "busgate_tenant_queued_bytes", "busgate_tenant_connections", "busgate_messages_in_total"):
        assert {lb["tenant"] for n, lb, _ in samples if n == name} == {"alpha", "beta"}, name
    assert all(n in types for n in ("busgate_build_info", "busgate_node_info"))

    # Requests per tenant: alpha sent 4 (2 answered, no responders, a timeout), beta 1.
    assert value(samples, "busgate_requests_total", tenant="alpha") == 4
    assert value(samples, "busgate_requests_total", tenant="beta") == 1
    assert value(samples, "busgate_requests_inflight", tenant="alpha") == 0
    # The histogram holds answers (replies and no-responders); a timeout is counted in errors.
    assert value(samples, "busgate_request_duration_seconds_count", tenant="alpha") == 3
    assert value(samples, "busgate_request_duration_seconds_count", tenant="beta") == 1
    assert value(samples, "busgate_request_duration_seconds_bucket", tenant="beta", le="+Inf") == 1
    assert value(samples, "busgate_request_duration_seconds_sum", tenant="alpha") > 0
    for tenant in ("alpha", "beta"):
        les = [lb["le"] for n, lb, _ in samples
               if n == "busgate_request_duration_seconds_bucket" and lb["tenant"] == tenant]
        finite = [float(x) for x in les if x != "+Inf"]
        assert finite == sorted(finite) and finite[0] == 50e-6, les
        assert finite[-1] == MAX_REQUEST_MS / 1000, les  # the top finite bucket is max_request_ms
        assert 30.0 in finite and 60.0 not in finite, les

    # Errors by tenant and name; the one before authentication has tenant="".
    assert value(samples, "busgate_errors_total", tenant="alpha", name="NO_RESPONDERS") == 1
    assert value(samples, "busgate_errors_total", tenant="alpha", name="REQUEST_TIMEOUT") == 1
    assert value(samples, "busgate_errors_total", tenant="beta", name="PERMISSION_DENIED") == 1
    assert value(samples, "busgate_errors_total", tenant="", name="HANDSHAKE_REQUIRED") == 1
    assert value(samples, "busgate_errors_total", tenant="beta", name="PERMISSION_DENIED", code="306") == 1
    assert not [lb for n, lb, _ in samples if n == "busgate_errors_total" and lb["tenant"] == "beta"
                and lb["name"] != "PERMISSION_DENIED"]

    # Connections and traffic per tenant.
    assert value(samples, "busgate_tenant_connections", tenant="alpha") == 3
    assert value(samples, "busgate_tenant_connections", tenant="beta") == 2
    assert value(samples, "busgate_connections", tenant="alpha", transport="tcp") == 3
    assert value(samples, "busgate_messages_out_total", tenant="alpha") >= 3
    assert value(samples, "busgate_messages_in_total", tenant="beta") >= 2
    assert value(samples, "busgate_slow_consumer_disconnects_total", tenant="alpha") == 0
    assert value(samples, "busgate_tenant_queued_bytes", tenant="alpha") >= 0

    # Build and node.
    version = re.search(r"project\(busgate VERSION (\S+)", (ROOT / "CMakeLists.txt").read_text()).group(1)
    info = [lb for n, lb, v in samples if n == "busgate_build_info" and v == 1]
    assert len(info) == 1 and info[0]["version"] == version and info[0]["compiler"], info
    node = [lb for n, lb, v in samples if n == "busgate_node_info" and v == 1]
    probe = clients(g.client("alpha-token"))
    assert node == [{"node_id": probe.welcome[3], "bus": "memory"}], node

    # Process metrics: plausible for a running process.
    assert value(samples, "process_open_fds") > 5  # listeners, client sockets, stdio
    assert value(samples, "process_max_fds") >= value(samples, "process_open_fds")
    assert value(samples, "process_resident_memory_bytes") > 1 << 20
    assert value(samples, "process_virtual_memory_bytes") >= value(samples, "process_resident_memory_bytes")
    assert value(samples, "process_cpu_seconds_total") >= 0
    start = value(samples, "process_start_time_seconds")
    assert time.time() - 600 < start <= time.time() + 1, start

    # Counters only grow: another request moves alpha's, not beta's.
    a = clients(g.client("alpha-token"))
    a.send(REQ, 1, "nobody.home", b"?")
    assert a.expect(RES)[2] == E["NO_RESPONDERS"]
    _, later = scrape(g)
    assert value(later, "busgate_requests_total", tenant="alpha") == 5
    assert value(later, "busgate_requests_total", tenant="beta") == 1
    assert value(later, "busgate_errors_total", tenant="alpha", name="NO_RESPONDERS") == 2
    assert value(later, "process_cpu_seconds_total") >= value(samples, "process_cpu_seconds_total")


def test_series_per_metric_stay_within_the_configured_tenants(start_gateway, clients):
    # Client-chosen text (names, subjects, unknown tokens) never becomes a label value.
    g = start_gateway(CONFIG)
    for i in range(5):
        c = clients(RawClient(g.tcp))
        c.send(1, [1], {"method": "token", "token": f"guess-{i}"}, f"name-{i}")
        c.expect_err("AUTH_FAILED")
    a = clients(g.client("alpha-token", name="someone"))
    for i in range(5):
        a.send(REQ, i + 1, f"random.subject.{i}", b"?")
        a.expect(RES)
    _, samples = scrape(g)
    tenants = {lb["tenant"] for _, lb, _ in samples if "tenant" in lb}
    assert tenants <= {"alpha", "beta", ""}, tenants
    for name in ("busgate_requests_total", "busgate_requests_inflight", "busgate_tenant_queued_bytes",
                 "busgate_request_duration_seconds_count"):
        assert len([1 for n, _, _ in samples if n == name]) == 2, name
