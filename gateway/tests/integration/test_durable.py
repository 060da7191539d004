"""Durable work queues on the memory bus (docs/protocol.md section 16), over raw frames against the
real gateway binary. The NATS/JetStream equivalents are in tests/nats/test_durable_nats.py."""
from __future__ import annotations

import time

import pytest

from rawgw import ERR, MSG, OK, PUB, SUB, UNSUB, E, frame

ACK, NAK, CREDIT, PROGRESS, TERM = 14, 15, 16, 17, 18
E.update({"INVALID_OPTION": 309, "UNKNOWN_DELIVERY": 310, "UNKNOWN_STREAM": 311, "TOO_MANY_CONSUMERS": 407,
          "NOT_STORED": 504})

CONFIG = """
admin: {token: "durable-admin-token"}
tenants:
  - name: acme
    tokens: ["acme-token-1"]
    streams:
      - {name: jobs, subjects: ["jobs.>"]}
      - {name: dead, subjects: ["deadletter.>"], retention: limits}
      - {name: small, subjects: ["small.>"], max_msgs: 2}
    consumers:
      - {name: workers, stream: jobs, subject: "jobs.work", max_inflight: 3, ack_wait_ms: 600, max_deliveries: 3}
      - {name: capped, stream: jobs, subject: "jobs.cap", max_inflight: 3, ack_wait_ms: 60000}
      - {name: slow, stream: jobs, subject: "jobs.slow", max_inflight: 10, ack_wait_ms: 60000, max_deliveries: 2,
         backoff_ms: [300]}
    limits: {max_consumers: 2, max_consumer_inflight: 5}
  - name: other
    tokens: ["other-token-1"]
    streams: [{name: jobs, subjects: ["jobs.>"]}]
    consumers: [{name: workers, stream: jobs, subject: "jobs.work", max_inflight: 3}]
"""


@pytest.fixture
def dgw(start_gateway):
    return start_gateway(CONFIG)


def durable_sub(c, sid, subject, durable, **opts):
    c.send(SUB, sid, subject, None, {"durable": durable, **opts})
    f = c.expect(OK)
    assert f[1:3] == [SUB, sid], f
    return f


def stored_pub(c, subject, payload, ack, msg_id=None):
    fields = [PUB, subject, payload, None, None, ack]
    if msg_id is not None:
        fields.append(msg_id)
    c.send(*fields)
    f = c.expect(OK)
    assert f[1:3] == [PUB, ack], f


def msgs(c, n, timeout=5.0):
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        out.append(c.expect(MSG, max(0.05, deadline - time.monotonic())))
    return out


def test_stored_messages_wait_for_a_consumer_and_are_acked_once(dgw, clients):
    p = clients(dgw.client("acme-token-1"))
    for i in range(5):
        stored_pub(p, "jobs.work", b"job-%d" % i, ack=i + 1)
    p.close()
    c = clients(dgw.client("acme-token-1"))
    durable_sub(c, 1, "jobs.work", "workers")
    got = msgs(c, 3)  # the consumer's cap is 3
    assert [m[3] for m in got] == [b"job-0", b"job-1", b"job-2"]
    assert all(len(m) == 8 and m[7] == 1 for m in got), got  # delivery_id and attempt 1
    assert c.drain(MSG, quiet=0.3) == []  # nothing beyond the cap while they are outstanding
    for m in got:
        c.send(ACK, 1, m[6])
    rest = msgs(c, 2)
    assert [m[3] for m in rest] == [b"job-3", b"job-4"]
    for m in rest:
        c.send(ACK, 1, m[6])
    c.flush()
    assert c.drain(MSG, quiet=1.0) == []  # acked: never again, not even after the ack wait


def test_cap_holds_across_connections_asking_for_more(dgw, clients):
    p = clients(dgw.client("acme-token-1"))
    for i in range(20):
        stored_pub(p, "jobs.cap", b"%d" % i, ack=i + 1)
    runners = [clients(dgw.client("acme-token-1")) for _ in range(4)]
    for r in runners:
        durable_sub(r, 7, "jobs.cap", "capped", max_inflight=10)
    held = []
    for r in runners:
        held.append(r.drain(MSG, quiet=0.3))
    assert sum(len(h) for h in held) == 3, [len(h) for h in held]
    # Acking one frees exactly one slot somewhere.
    r0 = next(i for i, h in enumerate(held) if h)
    runners[r0].send(ACK, 7, held[r0][0][6])
    more = sum(len(r.drain(MSG, quiet=0.3)) for r in runners)
    assert more == 1


def test_nak_with_delay_redelivers_as_the_next_attempt(dgw, clients):
    c = clients(dgw.client("acme-token-1"))
    durable_sub(c, 1, "jobs.work", "workers")
    stored_pub(c, "jobs.work", b"x", ack=1)
    m = c.expect(MSG)
    assert m[7] == 1
    t0 = time.monotonic()
    c.send(NAK, 1, m[6], 400)
    again = c.expect(MSG, timeout=3)
    assert time.monotonic() - t0 >= 0.35
    assert again[3] == b"x" and again[7] == 2 and again[6] != m[6]
    c.send(ACK, 1, again[6])
    c.send(ACK, 1, m[6])  # the first delivery is no longer outstanding
    e = c.expect_err("UNKNOWN_DELIVERY")
    assert e[3:5] == [ACK, 1]


def test_ack_wait_expiry_redelivers_and_progress_extends_it(dgw, clients):
    c = clients(dgw.client("acme-token-1"))
    durable_sub(c, 1, "jobs.work", "workers")
    stored_pub(c, "jobs.work", b"a", ack=1)
    stored_pub(c, "jobs.work", b"b", ack=2)
    first = {m[3]: m for m in msgs(c, 2)}
    # Keep "b" alive with PROGRESS well inside the 600 ms ack wait; let "a" expire once, then ack it.
    redelivered = []
    for _ in range(6):
        time.sleep(0.25)
        c.send(PROGRESS, 1, first[b"b"][6])
        for m in c.drain(MSG, quiet=0.01):
            redelivered.append(m)
            c.send(ACK, 1, m[6])
    assert [(m[3], m[7]) for m in redelivered] == [(b"a", 2)], redelivered
    c.send(ACK, 1, first[b"b"][6])  # still outstanding thanks to PROGRESS, after 1.5 s
    c.flush()
    assert not [f for f in c.backlog if f[0] == ERR], c.backlog


def test_closing_a_connection_releases_its_deliveries_at_once(dgw, clients):
    a = clients(dgw.client("acme-token-1"))
    durable_sub(a, 1, "jobs.slow", "slow")  # ack wait 60 s
    stored_pub(a, "jobs.slow", b"long job", ack=1)
    a.expect(MSG)
    b = clients(dgw.client("acme-token-1"))
    durable_sub(b, 2, "jobs.slow", "slow")
    t0 = time.monotonic()
    a.close()
    m = b.expect(MSG, timeout=3)
    assert time.monotonic() - t0 < 2  # not the 60 s ack wait
    assert m[3] == b"long job" and m[7] == 2


def test_unsub_releases_too(dgw, clients):
    a = clients(dgw.client("acme-token-1"))
    durable_sub(a, 1, "jobs.slow", "slow")
    stored_pub(a, "jobs.slow", b"j", ack=1)
    a.expect(MSG)
    a.send(UNSUB, 1)
    durable_sub(a, 2, "jobs.slow", "slow")
    m = a.expect(MSG, timeout=3)
    assert m[1] == 2 and m[7] == 2


def test_dead_letter_after_the_last_attempt(dgw, clients):
    c = clients(dgw.client("acme-token-1"))
    c.sub(9, "deadletter.>")
    durable_sub(c, 1, "jobs.work", "workers")
    c.send(PUB, "jobs.work", b"poison", {"trace": "t1"}, None, 1)
    c.expect(OK)
    for attempt in (1, 2, 3):  # max_deliveries 3
        m = c.expect(MSG)
        while m[1] != 1:
            m = c.expect(MSG)
        assert m[7] == attempt
        c.send(NAK, 1, m[6])
    dead = c.expect(MSG, timeout=3)
    assert dead[1] == 9 and dead[2] == "deadletter.workers" and dead[3] == b"poison"
    h = dead[4]
    assert h["busgate-dead-reason"] == "max_deliveries" and h["busgate-attempts"] == "3"
    assert h["busgate-subject"] == "jobs.work" and h["busgate-consumer"] == "workers"
    assert h["busgate-stream"] == "jobs" and h["trace"] == "t1" and h["busgate-tenant"] == "acme"
    assert [f for f in c.drain(MSG, quiet=0.5) if f[1] == 1] == []  # not delivered again


def test_term_dead_letters_at_once_with_the_reason(dgw, clients):
    c = clients(dgw.client("acme-token-1"))
    c.sub(9, "deadletter.slow")
    durable_sub(c, 1, "jobs.slow", "slow")
    stored_pub(c, "jobs.slow", b"bad input", ack=1)
    m = c.expect(MSG)
    c.send(TERM, 1, m[6], "cannot parse")
    dead = c.expect(MSG)
    assert dead[1] == 9 and dead[4]["busgate-dead-reason"] == "terminated: cannot parse"
    assert dead[4]["busgate-attempts"] == "1"


def test_nak_without_delay_uses_the_consumer_backoff(dgw, clients):
    c = clients(dgw.client("acme-token-1"))
    durable_sub(c, 1, "jobs.slow", "slow")  # backoff_ms [300]
    stored_pub(c, "jobs.slow", b"x", ack=1)
    m = c.expect(MSG)
    t0 = time.monotonic()
    c.send(NAK, 1, m[6])
    again = c.expect(MSG, timeout=3)
    assert time.monotonic() - t0 >= 0.25 and again[7] == 2


def test_msg_id_dedupes_re_sends(dgw, clients):
    c = clients(dgw.client("acme-token-1"))
    for ack in (1, 2, 3):
        stored_pub(c, "jobs.work", b"once", ack=ack, msg_id="order-42")
    durable_sub(c, 1, "jobs.work", "workers")
    m = c.expect(MSG)
    c.send(ACK, 1, m[6])
    assert c.drain(MSG, quiet=0.5) == []


def test_credit_flow_never_delivers_more_than_granted(dgw, clients):
    c = clients(dgw.client("acme-token-1"))
    for i in range(6):
        stored_pub(c, "jobs.c", b"%d" % i, ack=i + 1)
    durable_sub(c, 1, "jobs.c", "creditor", flow="credit", max_inflight=5)
    assert c.drain(MSG, quiet=0.3) == []  # no credit yet
    c.send(CREDIT, 1, 2)
    got = c.drain(MSG, quiet=0.3)
    assert len(got) == 2
    for m in got:
        c.send(ACK, 1, m[6])
    assert c.drain(MSG, quiet=0.3) == []  # acking does not grant credit
    c.send(CREDIT, 1, 10)
    got = c.drain(MSG, quiet=0.3)
    assert len(got) == 4  # what is left; bounded by max_inflight 5 too


def test_full_workqueue_stream_refuses_with_not_stored(dgw, clients):
    c = clients(dgw.client("acme-token-1"))
    stored_pub(c, "small.a", b"1", ack=1)
    stored_pub(c, "small.a", b"2", ack=2)
    c.send(PUB, "small.a", b"3", None, None, 3)
    e = c.expect_err("NOT_STORED")
    assert e[3:5] == [PUB, 3]


def test_option_and_settlement_errors(dgw, clients):
    c = clients(dgw.client("acme-token-1"))
    cases = [
        ({"durable": "workers", "colour": "red"}, "NOT_SUPPORTED", "jobs.work"),
        ({"flow": "credit"}, "NOT_SUPPORTED", "jobs.work"),
        ({"durable": "workers", "max_inflight": 0}, "INVALID_OPTION", "jobs.work"),
        ({"durable": "workers", "ack": "none"}, "INVALID_OPTION", "jobs.work"),
        ({"durable": "has space"}, "INVALID_OPTION", "jobs.work"),
        ({"durable": "workers"}, "INVALID_OPTION", "jobs.other"),  # not the consumer's subject
        ({"durable": "x"}, "UNKNOWN_STREAM", "orders.new"),
    ]
    for sid, (opts, code, subject) in enumerate(cases, start=10):
        c.send(SUB, sid, subject, None, opts)
        e = c.expect_err(code)
        assert e[3:5] == [SUB, sid], (opts, e)
    c.send(ACK, 99, 1)
    assert c.expect_err("UNKNOWN_SID")[3:5] == [ACK, 99]
    c.sub(5, "plain.>")
    c.send(ACK, 5, 1)
    assert c.expect_err("UNKNOWN_SID")[3:5] == [ACK, 5]
    durable_sub(c, 1, "jobs.work", "workers")
    c.send(ACK, 1, 12345)
    assert c.expect_err("UNKNOWN_DELIVERY")[3:5] == [ACK, 1]
    c.send(CREDIT, 1, 5)
    assert c.expect_err("INVALID_OPTION")[3:5] == [CREDIT, 1]
    c.send(PUB, "jobs.work", b"x", None, None, 4, "bad id")
    assert c.expect_err("INVALID_OPTION")[3:5] == [PUB, 4]
    # Still serving: a stored publish works afterwards.
    stored_pub(c, "jobs.work", b"ok", ack=5)


def test_client_created_consumers_are_limited_per_tenant(dgw, clients):
    c = clients(dgw.client("acme-token-1"))
    durable_sub(c, 1, "jobs.a", "mine-a")
    durable_sub(c, 2, "jobs.b", "mine-b", max_inflight=50)  # asks above the ceiling of 5
    c.send(SUB, 3, "jobs.c", None, {"durable": "mine-c"})
    assert c.expect_err("TOO_MANY_CONSUMERS")[3:5] == [SUB, 3]
    # A workqueue stream gives each message to one consumer: overlapping filters are refused.
    c.send(SUB, 4, "jobs.*", None, {"durable": "mine-a"})
    assert c.expect_err("INVALID_OPTION")[3:5] == [SUB, 4]
    for i in range(8):
        stored_pub(c, "jobs.b", b"%d" % i, ack=i + 1)
    assert len(c.drain(MSG, quiet=0.3)) == 5  # the ceiling, not 50


def test_tenants_never_share_a_consumer(dgw, clients):
    a = clients(dgw.client("acme-token-1"))
    o = clients(dgw.client("other-token-1"))
    durable_sub(o, 1, "jobs.work", "workers")
    stored_pub(a, "jobs.work", b"acme job", ack=1)
    assert o.drain(MSG, quiet=0.3) == []
    durable_sub(a, 1, "jobs.work", "workers")
    assert a.expect(MSG)[3] == b"acme job"


def test_the_embedded_default_has_a_work_queue(gw, clients):
    c = clients(gw.client())
    durable_sub(c, 1, "jobs.>", "workers")
    stored_pub(c, "jobs.hello", b"hi", ack=1, msg_id="k1")
    m = c.expect(MSG)
    assert m[3] == b"hi" and m[7] == 1
    c.send(ACK, 1, m[6])
    c.flush()


def test_malformed_settlement_frames_are_rejected_and_others_keep_working(dgw, clients):
    c = clients(dgw.client("acme-token-1"))
    other = clients(dgw.client("acme-token-1"))
    c.send_raw(frame(PROGRESS, 1))  # missing delivery_id
    c.expect_closed()
    stored_pub(other, "jobs.work", b"still fine", ack=1)


def test_consumer_backlog_and_progress_show_in_metrics_and_admin_api(dgw, clients):
    import http.client
    import json

    c = clients(dgw.client("acme-token-1"))
    for i in range(5):
        stored_pub(c, "jobs.cap", b"%d" % i, ack=i + 1)
    durable_sub(c, 1, "jobs.cap", "capped")
    got = msgs(c, 3)
    c.send(NAK, 1, got[0][6], 60000)  # waits a minute: still backlog, no longer ack-pending
    c.flush()
    status, text = dgw.http_get("/metrics")
    assert status == 200
    labels = 'tenant="acme",stream="jobs",consumer="capped"'
    assert f"busgate_consumer_ack_pending{{{labels}}} 3" in text, text  # the freed slot went to job 3
    assert f"busgate_consumer_pending{{{labels}}} 2" in text  # job 4, and job 0 waiting for its redelivery
    assert f"busgate_consumer_max_inflight{{{labels}}} 3" in text
    conn = http.client.HTTPConnection(*dgw.http, timeout=5)
    conn.request("GET", "/admin/consumers", headers={"Authorization": "Bearer durable-admin-token"})
    r = conn.getresponse()
    body = r.read()
    assert r.status == 200, body
    entry = [e for e in json.loads(body)["consumers"] if e["consumer"] == "capped"][0]
    assert entry["ack_pending"] == 3 and entry["subscribers"] == 1 and entry["tenant"] == "acme"
    assert entry["pending"] == 2 and entry["max_inflight"] == 3


def test_reload_adds_streams_and_changes_a_consumer_cap(start_gateway, clients):
    import signal

    before = """
tenants:
  - name: acme
    tokens: ["acme-token-1"]
    streams: [{name: jobs, subjects: ["jobs.>"]}]
    consumers: [{name: workers, stream: jobs, subject: "jobs.work", max_inflight: 1, ack_wait_ms: 60000}]
"""
    g = start_gateway(before)
    c = clients(g.client("acme-token-1"))
    c.send(PUB, "reports.daily", b"r", None, None, 1)
    assert c.expect(OK) == [OK, PUB, 1]  # no stream yet: an ordinary publish
    c.send(SUB, 2, "reports.>", None, {"durable": "readers"})
    assert c.expect_err("UNKNOWN_STREAM")[3:5] == [SUB, 2]
    for i in range(3):
        stored_pub(c, "jobs.work", b"%d" % i, ack=10 + i)
    durable_sub(c, 1, "jobs.work", "workers")
    assert len(c.drain(MSG, quiet=0.3)) == 1  # cap 1
    g.config_path.write_text(before.replace("max_inflight: 1", "max_inflight: 3").replace(
        'streams: [{name: jobs, subjects: ["jobs.>"]}]',
        'streams: [{name: jobs, subjects: ["jobs.>"]}, {name: reports, subjects: ["reports.>"]}]'))
    g.signal(signal.SIGHUP)
    g.wait_log("reloaded")
    durable_sub(c, 3, "jobs.work", "workers")  # a second subscriber: the new cap applies to the consumer
    assert len(c.drain(MSG, quiet=0.3)) == 2
    stored_pub(c, "reports.daily", b"stored now", ack=20)
    durable_sub(c, 2, "reports.>", "readers")
    assert c.expect(MSG)[3] == b"stored now"


def test_stored_publishes_reach_plain_subscribers_without_a_reply_subject(dgw, clients):
    c = clients(dgw.client("acme-token-1"))
    c.sub(9, "jobs.>")
    c.send(PUB, "jobs.work", b"stored", None, "replies.me", 1)
    assert c.expect(OK) == [OK, PUB, 1]
    plain = c.expect(MSG)
    assert plain[1] == 9 and plain[3] == b"stored" and len(plain) == 5  # no reply_to
    c.send(PUB, "jobs.work", b"fire and forget", None, "replies.me")  # no ack: stored, no reply either
    plain = c.expect(MSG)
    assert plain[3] == b"fire and forget" and len(plain) == 5
    durable_sub(c, 1, "jobs.work", "workers")
    for m in msgs(c, 2):
        assert m[1] == 1 and m[5] is None and m[6] >= 1  # durable deliveries carry no reply subject
