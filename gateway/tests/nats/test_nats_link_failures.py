"""What clients see when the gateway's NATS connection fails under them: requests and stored
publishes in flight, a NATS server that stops answering, and a NATS user whose permissions refuse a
subscription or a publish. Real nats-server processes, real gateways, raw frames."""
from __future__ import annotations

import signal
import tempfile
import time

import pytest

from natsfix import gateway_config
from rawgw import ERR, MSG, OK, PING, PONG, PUB, REQ, RES, SUB, E

BUS_UNAVAILABLE = E["BUS_UNAVAILABLE"]


def test_requests_in_flight_fail_at_once_when_nats_is_lost(nats, start_gateway, clients):
    ns = nats()
    g = start_gateway(gateway_config([ns.url], "gw-lost"))
    responder = clients(g.client())
    responder.sub(1, "svc.silent")
    requester = clients(g.client())
    requester.send(REQ, 5, "svc.silent", b"?", None, 10000)
    requester.send(REQ, 6, "svc.silent", b"?", None, 10000)
    assert responder.expect(MSG)[2] == "svc.silent"  # they reached the responder, which never answers
    assert responder.expect(MSG)[2] == "svc.silent"
    t0 = time.monotonic()
    ns.stop()
    got = [requester.expect(RES, timeout=5) for _ in range(2)]
    elapsed = time.monotonic() - t0
    assert sorted(f[1] for f in got) == [5, 6]
    assert all(f[2] == BUS_UNAVAILABLE for f in got), got
    assert elapsed < 2.0, f"answered after {elapsed:.1f} s (the requests' timeout is 10 s)"
    # while NATS is away, a new request is refused at once with the same code
    requester.send(REQ, 8, "svc.silent", b"?", None, 10000)
    assert requester.expect(RES, timeout=2)[1:3] == [8, BUS_UNAVAILABLE]


def freeze(ns):
    """SIGSTOP nats-server and wait until every thread of it has stopped (the signal is asynchronous)."""
    ns.proc.send_signal(signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with open(f"/proc/{ns.proc.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        time.sleep(0.005)
    raise AssertionError("nats-server did not stop")


def test_stored_publish_waiting_for_its_confirmation_fails_when_nats_is_lost(nats, start_gateway, clients):
    store = tempfile.TemporaryDirectory()
    try:
        ns = nats(extra=["-js", "-sd", store.name])
        cfg = gateway_config([ns.url], "gw-lost-store").replace(
            '  - name: other\n',
            '    streams:\n      - {name: jobs, subjects: ["jobs.>"], retention: workqueue, storage: memory}\n'
            '  - name: other\n', 1)
        g = start_gateway(cfg)
        c = clients(g.client())
        c.pub("jobs.a", b"1", ack=1)
        assert c.expect(OK, timeout=5)[1:3] == [PUB, 1]  # stored: JetStream is there
        freeze(ns)  # no PubAck can come now
        try:
            c.pub("jobs.a", b"2", ack=2)
            with pytest.raises(TimeoutError):
                c.expect(OK, timeout=0.5)
            t0 = time.monotonic()
        finally:
            ns.stop()  # killed while frozen: the connection is gone
        err = c.expect(ERR, timeout=5)
        assert err[1] == BUS_UNAVAILABLE and err[3:5] == [PUB, 2]
        assert time.monotonic() - t0 < 2.0
    finally:
        store.cleanup()


def nats_with_permissions(nats, tmp_path):
    conf = tmp_path / "nats.conf"
    conf.write_text("""
authorization {
  users = [
    {user: gw, password: pw, permissions: {
      subscribe: {deny: ["t.demo.secret.>"]},
      publish: {deny: ["t.demo.nopub.>"]}
    }}
  ]
}
""")
    ns = nats(extra=["-c", str(conf)])
    cfg = gateway_config([ns.url], "gw-perm").replace("bus: {kind: nats,", 'bus: {kind: nats, user: "gw", password: "pw",')
    return ns, cfg


def test_publish_the_nats_user_may_not_make_is_logged_and_the_link_stays_up(nats, start_gateway, clients, tmp_path):
    ns, cfg = nats_with_permissions(nats, tmp_path)
    g = start_gateway(cfg)
    c = clients(g.client())
    c.sub(1, "fine")
    c.pub("nopub.x", b"dropped", ack=1)
    g.wait_log(r"nats: the server refused a publish to t\.demo\.nopub\.x")
    c.pub("fine", b"still here")
    assert c.expect(MSG)[3] == b"still here"
    assert not any("disconnected" in line for line in g.log_lines)
    assert g.http_get("/readyz")[0] == 200


def test_subscription_the_nats_user_may_not_make_is_not_live(nats, start_gateway, clients, tmp_path):
    ns, cfg = nats_with_permissions(nats, tmp_path)
    g = start_gateway(cfg)
    c = clients(g.client())
    c.send(SUB, 1, "secret.plans")
    answer = c.recv()
    assert answer[0] in (OK, ERR), answer  # (see the next test for which)
    g.wait_log(r"nats: the server refused the subscription to t\.demo\.secret\.plans")
    # The link stays up; other subscriptions work.
    c.sub(2, "open")
    c.pub("open", b"x")
    assert c.expect(MSG)[3] == b"x"
    assert "t.demo.secret.plans" not in ns.subscriptions()
    assert g.http_get("/readyz")[0] == 200
    # A new connection does not ask for the refused subscription again.
    ns.stop()
    ns.start()
    g.wait_log(r"connection .* re-established")
    c.pub("open", b"y")
    deadline = time.monotonic() + 5
    while True:
        try:
            if c.expect(MSG, timeout=0.2)[3] == b"y":
                break
        except TimeoutError:
            assert time.monotonic() < deadline, "no delivery after NATS came back"
            c.pub("open", b"y")
    assert sum("refused the subscription" in line for line in g.log_lines) == 1


def test_subscription_refused_by_nats_is_answered_with_an_error(nats, start_gateway, clients, tmp_path):
    ns, cfg = nats_with_permissions(nats, tmp_path)
    g = start_gateway(cfg)
    c = clients(g.client())
    c.send(SUB, 1, "secret.plans")
    f = c.recv()
    assert f[0] == ERR and f[1] == E["PERMISSION_DENIED"] and f[3:5] == [SUB, 1], f
    refused = [line for line in g.http_get("/metrics")[1].splitlines()
               if line.startswith("busgate_bus_subscriptions_refused_total ")]
    assert refused == ["busgate_bus_subscriptions_refused_total 1"], refused  # visible to operators
    c.send(PING)
    assert c.expect(PONG)  # the connection goes on


def test_pub_ack_waits_until_nats_has_the_message(nats, start_gateway, clients):
    ns = nats()
    g = start_gateway(gateway_config([ns.url], "gw-confirm"))
    c = clients(g.client())
    c.pub("acked", b"1", ack=1)
    assert c.expect(OK)[1:3] == [PUB, 1]
    freeze(ns)
    try:
        c.pub("acked", b"2", ack=2)
        with pytest.raises(TimeoutError):
            c.expect(OK, timeout=0.8)  # NATS has not got it: no OK yet
    finally:
        ns.proc.send_signal(signal.SIGCONT)
    assert c.expect(OK, timeout=5)[1:3] == [PUB, 2]
