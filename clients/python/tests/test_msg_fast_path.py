"""The MSG fast path (protocol._msg_fields, used by decode() and by the TCP transport's read loop)
must accept a subset of what the generic decoder accepts, with the same result: every vector, and
seeded random mutations of MSG bodies. Plus the TCP read loop around it: fast and slow frames in
order, pausing at a frame boundary, closing on a malformed frame. No gateway."""
from __future__ import annotations

import asyncio
import json
import pathlib
import random

import msgpack
import pytest

from busgate import errors, protocol as P
from busgate._transport import TcpTransport

VECTORS = pathlib.Path(__file__).resolve().parents[3] / "conformance" / "vectors"
CASES = [c for f in sorted(VECTORS.glob("*.json")) if f.name != "schema.json"
         for c in json.loads(f.read_text())["cases"]]


def _generic(body: bytes):
    try:
        return P._decode_generic(body, P.GATEWAY)
    except errors.BusgateError as e:
        return e


def _check_same(body: bytes) -> bool:
    """Fast path result (if any) equals the generic decoder's; returns whether the fast path took it."""
    fields = P._msg_fields(body)
    if fields is None:
        return False
    want = _generic(body)
    assert not isinstance(want, BaseException), f"fast path accepted {body.hex()}, generic raised {want!r}"
    assert P.Msg(*fields) == want, body.hex()
    return True


def _bodies(data: bytes) -> list[bytes]:
    out, i = [], 0
    while len(data) - i >= 4:
        n = int.from_bytes(data[i:i + 4], "big")
        if n == 0 or len(data) - i - 4 < n:
            break
        out.append(data[i + 4:i + 4 + n])
        i += 4 + n
    return out


def test_fast_path_agrees_with_the_generic_decoder_on_every_vector():
    taken = 0
    for case in CASES:
        for body in _bodies(bytes.fromhex(case["hex"])):
            taken += _check_same(body)
            if case["from"] == P.GATEWAY and not case["valid"] and case["error"] != "FRAME_TOO_LARGE" \
                    and P._msg_fields(body) is not None:
                pytest.fail(f"{case['id']}: an invalid vector took the fast path")
    assert taken > 0


SEEDS = [
    P.encode(P.Msg(1, "orders.created", b"hello", {"busgate-tenant": "demo"})),
    P.encode(P.Msg(7, "a.b.c", b"x" * 40, {"busgate-tenant": "demo", "k": "v"}, "_INBOX.abc.1")),
    P.encode(P.Msg(4294967295, "s", b"")),
    P.encode(P.Msg(300, "s.t", b"p", None, "r")),
    msgpack.packb([6, 1, "s", b"p", {}], use_bin_type=True),
    msgpack.packb([6, 1, "s", b"p", None, "r"], use_bin_type=True),
    # durable deliveries: delivery_id and attempt (fields 6 and 7)
    P.encode(P.Msg(20, "jobs.resize", b"img-1", {"busgate-tenant": "acme"}, None, 1, 1)),
    msgpack.packb([6, 20, "j", b"p", None, None, 2 ** 53 - 1, 300], use_bin_type=True),
    msgpack.packb([6, 1, "s", b"p", {"busgate-tenant": "d"}, "r", 0, 0], use_bin_type=True),  # 0: absent
    bytes.fromhex("9506") + msgpack.packb(1) + msgpack.packb("s") + msgpack.packb(b"p", use_bin_type=True)
    + bytes.fromhex("82a16ba178a16ba179"),  # duplicate header key
]


def test_fast_path_agrees_with_the_generic_decoder_on_mutated_bodies():
    rng = random.Random(20261126)
    for seed in SEEDS:
        _check_same(seed)
        for _ in range(3000):
            b = bytearray(seed)
            for _ in range(rng.randint(1, 3)):
                r = rng.random()
                if r < 0.6:
                    b[rng.randrange(len(b))] = rng.randrange(256)
                elif r < 0.8 and len(b) > 1:
                    del b[rng.randrange(len(b))]
                else:
                    b.insert(rng.randrange(len(b) + 1), rng.randrange(256))
            _check_same(bytes(b))


def test_fast_path_rejections():
    assert P._msg_fields(SEEDS[-1]) is None  # duplicate key: the generic path says why
    with pytest.raises(errors.MalformedFrame):
        P.decode(SEEDS[-1])
    for items in ([6, 1, "s", b"p", {1: "x"}], [6, 1, "s", b"p", {"k": ["x"]}], [6, 1, "s", b"p", {"k": 1}],
                  [6, 1, "s", b"p", {b"k": "x"}], [6, -1, "s", b"p"], [6, 1, b"s", b"p"], [6, 1, "s", "p"],
                  [6, 1, "s", b"p", None, 5], [6, 2 ** 32, "s", b"p"], [6, 1, "s", b"p", [["k", "v"]]],
                  [6, 1, "s", b"p", None, None, -1], [6, 1, "s", b"p", None, None, 1, 1.5],
                  [6, 1, "s", b"p", None, None, "1"], [6, 1, "s", b"p", None, None, True],
                  [6, 1, "s", b"p", None, None, 1, -2]):
        body = msgpack.packb(items, use_bin_type=True)
        assert P._msg_fields(body) is None, items
        with pytest.raises(errors.MalformedFrame):
            P.decode(body)


def test_fast_path_gives_each_message_its_own_headers_dict():
    body = SEEDS[0]
    a, b = P.decode(body), P.decode(body)
    assert a.headers == b.headers == {"busgate-tenant": "demo"} and a.headers is not b.headers
    a.headers["x"] = "y"
    assert P.decode(body).headers == {"busgate-tenant": "demo"}


class _FakeAsyncioTransport:
    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def abort(self) -> None:
        pass


class _Sink:
    def __init__(self) -> None:
        self.got: list = []
        self.lost: list = []
        self.transport: TcpTransport | None = None
        self.pause_after: int | None = None

    def on_msg(self, sid, subject, payload, headers, reply_to, delivery_id=None, attempt=None) -> None:
        self.got.append(P.Msg(sid, subject, payload, headers, reply_to, delivery_id, attempt))
        if self.pause_after is not None and len(self.got) >= self.pause_after:
            self.transport.pause_reading()

    def on_frame(self, f) -> None:
        self.got.append(f)

    def on_transport_lost(self, exc) -> None:
        self.lost.append(exc)


async def test_tcp_read_loop_fast_and_generic_frames_pause_and_failure():
    sink = _Sink()
    t = TcpTransport(sink, asyncio.get_running_loop())
    sink.transport = t
    t.transport = _FakeAsyncioTransport()  # type: ignore[assignment]
    t.max_frame = P.DEFAULT_MAX_FRAME
    m1 = P.Msg(1, "a.b", b"x" * 100, {"busgate-tenant": "demo"})
    m2 = P.Msg(2, "a.c", b"", None, "_INBOX.x")
    stream = b"".join(P.encode_framed(f) for f in (m1, P.Ping(), m2, m1, P.Pong()))
    # one frame over many reads, many frames in one read
    t._on_data(stream[:7])
    t._on_data(stream[7:60])
    assert sink.got == []
    t._on_data(stream[60:])
    assert sink.got == [m1, P.Ping(), m2, m1, P.Pong()] and t.parser.buffered == 0

    # pausing stops at a frame boundary; resuming delivers the rest
    sink.got.clear()
    sink.pause_after = 1
    t._on_data(P.encode_framed(m1) * 3)
    assert sink.got == [m1] and t.parser.buffered == 2 * len(P.encode_framed(m1))
    sink.pause_after = None
    t.resume_reading()
    await asyncio.sleep(0)
    assert sink.got == [m1] * 3 and t.parser.buffered == 0

    # a malformed MSG after a good one: the good one is delivered, then the connection fails
    sink.got.clear()
    bad = SEEDS[-1]
    t._on_data(P.encode_framed(m2) + len(bad).to_bytes(4, "big") + bad + P.encode_framed(m1))
    assert sink.got == [m2]
    assert len(sink.lost) == 1 and isinstance(sink.lost[0], errors.MalformedFrame)


async def test_tcp_read_loop_frame_too_large_from_the_prefix():
    sink = _Sink()
    t = TcpTransport(sink, asyncio.get_running_loop())
    t.max_frame = 16
    t._on_data(bytes.fromhex("00000011"))
    assert len(sink.lost) == 1 and isinstance(sink.lost[0], errors.FrameTooLarge)


async def test_tcp_read_loop_over_many_windows_and_a_frame_longer_than_one():
    small = [P.Msg(1, "a.b", str(i).encode(), {"busgate-tenant": "demo"}) for i in range(3000)]
    big = P.Msg(2, "a.big", b"y" * (3 * TcpTransport.WINDOW), None, "_INBOX.r")
    frames = small + [big, P.Ping()] + small
    stream = b"".join(P.encode_framed(f) for f in frames)
    rng = random.Random(7)
    for chunks in ([stream], [stream[i:i + 1000] for i in range(0, len(stream), 1000)]):
        sink = _Sink()
        t = TcpTransport(sink, asyncio.get_running_loop())
        t.transport = _FakeAsyncioTransport()  # type: ignore[assignment]
        sink.transport = t
        t.max_frame = P.DEFAULT_MAX_FRAME
        for c in chunks:
            t._on_data(c)
            if rng.random() < 0.3:  # pause now and then, resume on the next turn
                t.pause_reading()
                t.resume_reading()
                await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert sink.got == frames and t.parser.buffered == 0 and not sink.lost
