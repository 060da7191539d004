"""A stalled consumer gets SLOW_CONSUMER_WARNING, then SLOW_CONSUMER and a close, and never slows
a healthy consumer of the same messages."""
import threading
import time

from rawgw import ERR, MSG, Closed, E, RawClient, burst_to_slow_reader

CONFIG = """
limits: {max_pending_bytes: 4194304}
tenants: [{name: demo, tokens: [dev-token-1]}]
"""


def test_stalled_consumer_is_cut_off_and_fast_one_keeps_up(start_gateway, clients):
    g = start_gateway(CONFIG)
    stalled = RawClient(g.tcp, rcvbuf=4096)
    stalled.hello("dev-token-1")
    stalled.sub(1, "feed")
    fast = clients(g.client("dev-token-1"))
    fast.sub(1, "feed")
    pub = clients(g.client("dev-token-1"))
    n = 400
    payload = b"x" * 65536  # 26 MB in all: far more than socket buffers and max_pending hold
    received = []

    def reader():
        while len(received) < n:
            f = fast.expect(MSG, timeout=10)
            received.append(f[3])
            caught_up.set()

    caught_up = threading.Event()
    t = threading.Thread(target=reader)
    t.start()
    t0 = time.monotonic()
    for i in range(n):
        pub.pub("feed", payload)
        while i - len(received) > 4:  # pace the publisher to what a healthy reader takes
            caught_up.wait(0.05)
            caught_up.clear()
    pub.flush(timeout=20)
    t.join(30)
    assert len(received) == n  # the healthy consumer got everything
    # ... and was never cut off (a warning is allowed when the machine is busy)
    assert not any(f[0] == ERR and f[1] == E["SLOW_CONSUMER"] for f in fast.backlog)
    # now read what the stalled one was sent: a warning, then the fatal error, then the close
    codes = []
    frames = 0
    try:
        while True:
            f = stalled.recv(timeout=5)
            frames += 1
            if f[0] == ERR:
                codes.append(f[1])
    except Closed:
        pass
    print("stalled client read", frames, "frames; errors", codes)
    assert E["SLOW_CONSUMER_WARNING"] in codes
    assert codes[-1] == E["SLOW_CONSUMER"]
    stalled.close()
    assert time.monotonic() - t0 < 30
    g.wait_log(r"connection closed .*reason=\"SLOW_CONSUMER")


def test_burst_is_paced_on_the_memory_bus(start_gateway, clients):
    """Producer flow control on the embedded bus, whichever I/O threads the two connections land on: a
    burst twenty times max_pending_bytes reaches a consumer that keeps reading, whole."""
    g = start_gateway("""
limits: {max_pending_bytes: 1048576}
tenants: [{name: demo, tokens: [dev-token-1]}]
""")
    for _ in range(2):  # the second pair lands on the other thread arrangement
        reader = clients(g.client("dev-token-1"))
        reader.sub(1, "burst")
        pub = clients(g.client("dev-token-1"))
        n = 600
        got, errors = burst_to_slow_reader(pub, reader, "burst", n, b"y" * 32768)  # ~20 MB
        assert E["SLOW_CONSUMER"] not in errors, errors
        assert len(got) == n, (len(got), errors)
        reader.close()
        pub.close()
        g.client("dev-token-1").close()  # shift the round-robin by one connection
