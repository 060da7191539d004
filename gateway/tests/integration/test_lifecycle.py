"""The binary's lifecycle: --help, --check-config, SIGHUP reload and SIGTERM drain with GOAWAY."""
import signal
import subprocess
import time

from rawgw import BINARY, ERR, GOAWAY, MSG, OK, PUB, REQ, RES, E, sha


def test_help_lists_every_option():
    out = subprocess.run([str(BINARY), "--help"], capture_output=True, text=True, check=True).stdout
    for opt in ("--dev", "--config", "--check-config", "--tcp", "--http", "--log-format", "--hash-token"):
        assert opt in out


def test_check_config_names_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tenants:\n  - name: acme\n    tokens: [acme-secret-1]\n    limits: {max_payload: -5}\n")
    r = subprocess.run([str(BINARY), "--check-config", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "tenants[0].limits.max_payload" in r.stderr
    good = tmp_path / "good.yaml"
    good.write_text("tenants:\n  - name: acme\n    tokens: [acme-secret-1]\n")
    r = subprocess.run([str(BINARY), "--check-config", str(good)], capture_output=True, text=True)
    assert r.returncode == 0 and "valid" in r.stdout


def test_bad_config_refuses_to_start(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: {tcp: 'localhost'}\ntenants: [{name: a, tokens: [aaaaaaaa]}]\n")
    r = subprocess.run([str(BINARY), "--config", str(bad)], capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and "listen.tcp" in r.stderr


def test_hash_token():
    out = subprocess.run([str(BINARY), "--hash-token", "s3cret-token"], capture_output=True, text=True).stdout
    assert out.strip() == sha("s3cret-token")


def test_healthz(gw):
    assert gw.http_get("/healthz") == (200, "ok\n")
    assert gw.http_get("/readyz")[0] == 200
    assert gw.http_get("/nope")[0] == 404


def test_json_logs(start_gateway, clients):
    import json
    g = start_gateway(extra_args=["--log-format", "json"])
    clients(g.client())
    line = g.wait_log(r'"msg":"connection open')
    entry = json.loads(line)
    assert entry["level"] == "info" and "tenant=demo" in entry["msg"] and "transport=tcp" in entry["msg"]


def test_connection_log_lines(gw, clients):
    c = gw.client(name="logger-test")
    gw.wait_log(r"connection open session=\S+ tenant=demo transport=tcp remote=127\.0\.0\.1:\d+ name=\"logger-test\"")
    c.close()
    gw.wait_log(r"connection closed session=\S+ tenant=demo transport=tcp remote=127\.0\.0\.1:\d+ reason=\"peer closed\"")


RELOAD_BEFORE = f"""
tenants:
  - name: acme
    tokens_sha256: ["{sha('acme-token-old')}", "{sha('acme-token-keep')}"]
    limits: {{max_payload: 100}}
"""
RELOAD_AFTER = f"""
tenants:
  - name: acme
    tokens_sha256: ["{sha('acme-token-keep')}"]
    limits: {{max_payload: 100, publish_msgs_per_sec: 2}}
"""


def test_sighup_reload(start_gateway, clients):
    g = start_gateway(RELOAD_BEFORE)
    old = clients(g.client("acme-token-old"))
    keep = clients(g.client("acme-token-keep"))
    keep.sub(1, "x")
    g.config_path.write_text(RELOAD_AFTER)
    g.signal(signal.SIGHUP)
    g.wait_log("reloaded 1 tenants")
    # the revoked token's connection is closed, the other one stays with its subscription
    err = old.expect(ERR)
    assert err[1] == E["AUTH_REVOKED"]
    old.expect_closed()
    t0 = time.monotonic()
    for i in range(1, 6):
        keep.pub("x", b"m", ack=i)
    answers = keep.drain(quiet=0.3)  # every frame until the connection is quiet
    elapsed = time.monotonic() - t0
    oks = [a for a in answers if a[0] == OK]
    errs = [a for a in answers if a[0] == ERR]
    msgs = [a for a in answers if a[0] == MSG]
    # the new limit (2/s, burst 2) applies at once: about 2 of the 5 pass
    assert 2 <= len(oks) <= 2 + int(2 * elapsed) and len(msgs) == len(oks) and len(errs) == 5 - len(oks)
    assert all(e[1] == E["RATE_LIMITED"] for e in errs)


def test_sighup_with_a_broken_file_keeps_serving(start_gateway, clients):
    g = start_gateway(RELOAD_BEFORE)
    c = clients(g.client("acme-token-old"))
    g.config_path.write_text("tenants: [")
    g.signal(signal.SIGHUP)
    g.wait_log("reload failed")
    assert c.flush()
    clients(g.client("acme-token-old"))


DRAIN = """
timeouts: {goaway_delay_ms: 400, drain_ms: 3000}
tenants: [{name: demo, tokens: [dev-token-1]}]
"""


def test_sigterm_drains_with_goaway(start_gateway, clients):
    g = start_gateway(DRAIN)
    responder = clients(g.client("dev-token-1"))
    responder.sub(1, "svc.slow")
    c = clients(g.client("dev-token-1"))
    c.send(REQ, 1, "svc.slow", b"a", None, 5000)
    req = responder.expect(MSG)
    c.send(REQ, 2, "svc.slow", b"b", None, 5000)
    responder.expect(MSG)
    t0 = time.monotonic()
    g.signal(signal.SIGTERM)
    goaway = c.expect(GOAWAY)
    assert goaway[1] == 400
    # work in flight is still answered during the delay
    responder.pub(req[5], b"answered")
    res = c.expect(RES)
    assert res[1:4] == [1, 0, b"answered"]
    # new connections are refused
    # at the delay: RES SHUTTING_DOWN for what is still in flight, then a fatal ERR
    res2 = c.expect(RES, timeout=3)
    assert res2[1:3] == [2, E["SHUTTING_DOWN"]]
    err = c.expect(ERR)
    assert err[1] == E["SHUTTING_DOWN"]
    c.expect_closed()
    assert g.proc.wait(5) == 0
    assert time.monotonic() - t0 < 4
