#!/usr/bin/env python3
"""Write the busgate v1 conformance wire vectors: conformance/vectors/<area>.json.

    python3 conformance/vectors/generate.py          # (re)write the vector files
    python3 conformance/vectors/generate.py --check  # exit 1 if the files on disk are stale

Every case is written here as msgpack bytes plus what a decoder must make of them. Nothing is
copied into the files on trust: a reference decoder (written from docs/protocol.md) decodes every
case, and the script asserts that
  - an invalid case fails with exactly the expected error name;
  - a canonical case decodes to `decoded`, and encoding `decoded` back gives exactly `hex`;
  - a non-canonical case decodes to the canonical JSON of the frame it stands for, and its bytes
    differ from that frame's canonical encoding;
and then validates every file against schema.json, and checks that every example of
docs/protocol.md that names a vector shows that vector's canonical JSON (and hex, when it shows bytes).

Requires Python 3.11 and the `msgpack` and `jsonschema` packages.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import sys
from pathlib import Path

import jsonschema
import msgpack

HERE = Path(__file__).resolve().parent
DEFAULT_MAX_FRAME = 1114112

# --------------------------------------------------------------------------------------------------
# The protocol, as the sheet states it.

ERRORS = {
    "MALFORMED_FRAME": 100, "UNKNOWN_OP": 101, "FRAME_TOO_LARGE": 102, "NOT_BUSGATE": 103,
    "HANDSHAKE_REQUIRED": 104, "UNSUPPORTED_VERSION": 105, "HANDSHAKE_TIMEOUT": 106,
    "UNEXPECTED_OP": 107, "AUTH_METHOD_UNSUPPORTED": 200, "AUTH_FAILED": 201, "AUTH_REVOKED": 202,
    "INVALID_SUBJECT": 300, "WILDCARD_NOT_ALLOWED": 301, "RESERVED_SUBJECT": 302,
    "RESERVED_HEADER": 303, "INVALID_HEADER": 304, "INVALID_QUEUE": 305, "PERMISSION_DENIED": 306,
    "SID_IN_USE": 307, "UNKNOWN_SID": 308, "INVALID_OPTION": 309, "UNKNOWN_DELIVERY": 310,
    "UNKNOWN_STREAM": 311, "PAYLOAD_TOO_LARGE": 400, "TOO_MANY_SUBSCRIPTIONS": 401,
    "RATE_LIMITED": 402, "TOO_MANY_REQUESTS": 403, "TOO_MANY_CONNECTIONS": 404,
    "SLOW_CONSUMER_WARNING": 405, "SLOW_CONSUMER": 406, "TOO_MANY_CONSUMERS": 407, "NO_RESPONDERS": 500,
    "REQUEST_TIMEOUT": 501, "BUS_UNAVAILABLE": 502, "DUPLICATE_REQUEST_ID": 503, "NOT_STORED": 504,
    "INTERNAL_ERROR": 600, "SHUTTING_DOWN": 601, "IDLE_TIMEOUT": 602, "CLOSED_BY_ADMIN": 603,
    "NOT_SUPPORTED": 604,
}
E = ERRORS  # short alias for the case tables below

# A field: (name, type, optional, grammar). Grammar applies to frames from a client only:
# "pub" = publish subject, "sub" = subscribe subject, "queue" = queue group, "headers" = header map.
C, G, BOTH = "client", "gateway", "both"
OPS = {
    1: ("HELLO", C, [("versions", "versions", False, None), ("auth", "map", False, None),
                     ("name", "str", True, None), ("opts", "map", True, None)]),
    2: ("WELCOME", G, [("version", "uint", False, None), ("session_id", "str", False, None),
                       ("node_id", "str", False, None), ("tenant", "str", False, None),
                       ("limits", "map", False, None)]),
    3: ("PUB", C, [("subject", "str", False, "pub"), ("payload", "bin", False, None),
                   ("headers", "headers", True, "headers"), ("reply_to", "str", True, "pub"),
                   ("ack", "id", True, None), ("msg_id", "str", True, None)]),
    4: ("SUB", C, [("sid", "id", False, None), ("subject", "str", False, "sub"),
                   ("queue", "str", True, "queue"), ("opts", "map", True, None)]),
    5: ("UNSUB", C, [("sid", "id", False, None), ("max_msgs", "uint", True, None)]),
    6: ("MSG", G, [("sid", "id", False, None), ("subject", "str", False, None),
                   ("payload", "bin", False, None), ("headers", "headers", True, None),
                   ("reply_to", "str", True, None), ("delivery_id", "uint", True, None),
                   ("attempt", "uint", True, None)]),
    7: ("REQ", C, [("req_id", "id", False, None), ("subject", "str", False, "pub"),
                   ("payload", "bin", False, None), ("headers", "headers", True, "headers"),
                   ("timeout_ms", "uint", True, None)]),
    8: ("RES", G, [("req_id", "id", False, None), ("status", "uint", False, None),
                   ("payload", "bin", False, None), ("headers", "headers", True, None)]),
    9: ("OK", G, [("ref_op", "uint", False, None), ("ref_id", "uint", False, None)]),
    10: ("ERR", G, [("code", "uint", False, None), ("message", "str", False, None),
                    ("ref_op", "uint", True, None), ("ref_id", "uint", True, None)]),
    11: ("PING", BOTH, []),
    12: ("PONG", BOTH, []),
    13: ("GOAWAY", G, [("delay_ms", "uint", False, None), ("reason", "str", False, None),
                      ("servers", "strs", True, None)]),
    14: ("ACK", C, [("sid", "id", False, None), ("delivery_id", "uint", False, None)]),
    15: ("NAK", C, [("sid", "id", False, None), ("delivery_id", "uint", False, None),
                   ("delay_ms", "uint", True, None)]),
    16: ("CREDIT", C, [("sid", "id", False, None), ("credits", "uint", False, None)]),
    17: ("PROGRESS", C, [("sid", "id", False, None), ("delivery_id", "uint", False, None)]),
    18: ("TERM", C, [("sid", "id", False, None), ("delivery_id", "uint", False, None),
                    ("reason", "str", True, None)]),
}
OP = {name: code for code, (name, _, _) in OPS.items()}

SUBJECT_MAX, QUEUE_MAX = 256, 64
HEADER_KEY_MAX, HEADER_VALUE_MAX, HEADERS_MAX = 64, 4096, 64
HEADER_KEY_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")

# --------------------------------------------------------------------------------------------------
# Reference decoder.


def require(condition: bool, message: str) -> None:
    """An assert that `python -O` cannot compile away: these checks are the point of the script."""
    if not condition:
        raise AssertionError(message)


class WireError(Exception):
    """The frame is invalid; args[0] is the error name from the registry."""


class Map(list):
    """A msgpack map kept as its list of (key, value) pairs, so key order and duplicates survive."""


def _uint(v) -> bool:
    return type(v) is int and v >= 0


def _json_value(v):
    """An opts/auth/limits value ("any") as JSON; bin and ext have no JSON form and are rejected."""
    if v is None or type(v) in (bool, int, float, str):
        return v
    if type(v) is list:
        return [_json_value(x) for x in v]
    if type(v) is Map:
        return _json_map(v, _json_value)
    raise WireError("MALFORMED_FRAME")


def _json_map(pairs: Map, value) -> dict:
    out = {}
    for k, v in pairs:
        if type(k) is not str or k in out:
            raise WireError("MALFORMED_FRAME")
        out[k] = value(v)
    return out


def _header_value(v):
    if type(v) is not str:
        raise WireError("MALFORMED_FRAME")
    return v


def _typed(v, ftype):
    """Check one present field against its type; return its JSON mapping."""
    if ftype == "uint" and _uint(v):
        return v
    if ftype == "id" and _uint(v) and v <= 0xFFFFFFFF:
        return v
    if ftype == "str" and type(v) is str:
        return v
    if ftype == "bin" and type(v) is bytes:
        return payload_json(v)
    if ftype == "map" and type(v) is Map:
        return _json_map(v, _json_value)
    if ftype == "headers" and type(v) is Map:
        return _json_map(v, _header_value) or None  # {} decodes as "no headers"
    if ftype == "versions" and type(v) is list and v and all(_uint(x) for x in v):
        return v
    if ftype == "strs" and type(v) is list and all(type(x) is str for x in v):
        return v or None  # [] means "none given"
    raise WireError("MALFORMED_FRAME")


def _reject_ext(v) -> None:
    """busgate uses no msgpack ext type (timestamps included), not even in ignored fields."""
    if isinstance(v, (msgpack.ExtType, msgpack.Timestamp)):
        raise WireError("MALFORMED_FRAME")
    for x in v if type(v) is list else (x for kv in v for x in kv) if type(v) is Map else ():
        _reject_ext(x)


def payload_json(b: bytes):
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(b).decode("ascii")}


def check_subject(s: str, wildcards: bool) -> None:
    b = s.encode("utf-8")
    if not 1 <= len(b) <= SUBJECT_MAX:
        raise WireError("INVALID_SUBJECT")
    tokens = b.split(b".")
    wild = False
    for i, tok in enumerate(tokens):
        if not tok or any(c <= 0x20 or c == 0x7F for c in tok):
            raise WireError("INVALID_SUBJECT")
        if b"*" in tok or b">" in tok:
            if tok not in (b"*", b">") or (tok == b">" and i != len(tokens) - 1):
                raise WireError("INVALID_SUBJECT")
            wild = True
    if wild and not wildcards:
        raise WireError("WILDCARD_NOT_ALLOWED")
    if tokens[0].startswith(b"$"):
        raise WireError("RESERVED_SUBJECT")


def check_queue(q: str) -> None:
    b = q.encode("utf-8")
    if not 1 <= len(b) <= QUEUE_MAX or any(c <= 0x20 or c == 0x7F or c in b".*>" for c in b):
        raise WireError("INVALID_QUEUE")


def check_headers(h: dict) -> None:
    if len(h) > HEADERS_MAX:
        raise WireError("INVALID_HEADER")
    for k, v in h.items():
        kb = k.encode("utf-8")
        if not 1 <= len(kb) <= HEADER_KEY_MAX or any(c not in HEADER_KEY_BYTES for c in kb):
            raise WireError("INVALID_HEADER")
        if len(v.encode("utf-8")) > HEADER_VALUE_MAX or "\r" in v or "\n" in v:
            raise WireError("INVALID_HEADER")
        if k.lower().startswith("busgate-"):
            raise WireError("RESERVED_HEADER")


def decode_frame(frame: bytes, sender: str, max_frame: int = DEFAULT_MAX_FRAME) -> list:
    """Decode one full TCP frame sent by `sender`; return its canonical JSON mapping."""
    n = int.from_bytes(frame[:4], "big")
    require(len(frame) == 4 + n, "a vector holds exactly one whole frame")
    if n == 0:
        raise WireError("MALFORMED_FRAME")
    if n > max_frame:
        raise WireError("FRAME_TOO_LARGE")
    try:
        body = msgpack.unpackb(frame[4:], raw=False, strict_map_key=False, object_pairs_hook=Map)
    except ValueError:  # not msgpack, truncated, trailing bytes, str that is not UTF-8
        raise WireError("MALFORMED_FRAME") from None
    if type(body) is not list or not body or not _uint(body[0]):
        raise WireError("MALFORMED_FRAME")
    if body[0] not in OPS:
        raise WireError("UNKNOWN_OP")
    _, direction, fields = OPS[body[0]]
    if direction not in (BOTH, sender):
        raise WireError("UNEXPECTED_OP")
    _reject_ext(body)
    out = [body[0]]
    for i, (_, ftype, optional, _) in enumerate(fields, 1):
        v = body[i] if i < len(body) else None
        if v is None and not optional:
            raise WireError("MALFORMED_FRAME")
        if v is not None:
            v = _typed(v, ftype)
        if optional and v == 0 and ftype in ("uint", "id"):
            v = None  # an optional uint of 0 means the same as absent (ack 0 = none, ...)
        out.append(v)
    if sender == C:
        for value, (_, _, _, grammar) in zip(out[1:], fields):
            if value is None or grammar is None:
                continue
            if grammar == "headers":
                check_headers(value)
            elif grammar == "queue":
                check_queue(value)
            else:
                check_subject(value, wildcards=grammar == "sub")
    while len(out) > 1 and out[-1] is None:  # canonical: trailing absent fields omitted
        out.pop()
    return out


# --------------------------------------------------------------------------------------------------
# Canonical encoder from the JSON mapping: payload positions -> bin, every other string -> str,
# smallest integer and length encodings, maps in the given key order.


def encode_json(decoded: list) -> bytes:
    fields = OPS[decoded[0]][2]
    items = [decoded[0]]
    for (_, ftype, _, _), v in zip(fields, decoded[1:]):
        if ftype == "bin":
            v = v.encode() if type(v) is str else base64.b64decode(v["base64"], validate=True)
        items.append(v)
    require(len(items) == len(decoded), "decoded carries no fields beyond the op's table")
    return pack(items)


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


# --------------------------------------------------------------------------------------------------
# Byte builders for hand-made (non-canonical or invalid) bodies.


def pack(value) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


class Raw(bytes):
    """Bytes that `cat` inserts as they are (plain bytes values are packed as msgpack bin)."""


def cat(*parts) -> bytes:
    return b"".join(p if type(p) is Raw else pack(p) for p in parts)


def _header(prefix: int, width: int):
    return lambda n: Raw(bytes([prefix]) + n.to_bytes(width, "big"))


def ARR(n: int) -> Raw:
    return Raw(bytes([0x90 | n]))


def MAP(n: int) -> Raw:
    return Raw(bytes([0x80 | n]))


# Wider encodings than a canonical encoder would pick.
U16, U32, U64 = _header(0xCD, 2), _header(0xCE, 4), _header(0xCF, 8)
ARR16, MAP16 = _header(0xDC, 2), _header(0xDE, 2)


def I8(n: int) -> Raw:
    return Raw(b"\xd0" + n.to_bytes(1, "big", signed=True))


def F64(x: float) -> Raw:
    return Raw(b"\xcb" + struct.pack(">d", x))


def STR8(s: str) -> Raw:
    b = s.encode("utf-8")
    return Raw(b"\xd9" + bytes([len(b)]) + b)


def BIN16(b: bytes) -> Raw:
    return Raw(b"\xc5" + len(b).to_bytes(2, "big") + b)


NIL = Raw(b"\xc0")


# --------------------------------------------------------------------------------------------------
# Cases.


class Area:
    def __init__(self, name: str):
        self.name = name
        self.cases: list[dict] = []

    def _add(self, cid, desc, frm, body, max_frame, **result):
        case = {"id": cid, "description": desc, "from": frm, "hex": frame(body).hex()}
        case.update(result)
        if max_frame is not None:
            case["max_frame"] = max_frame
        self.cases.append(case)

    def ok(self, cid, desc, frm, value, max_frame=None):
        """A canonical valid case: the body is the msgpack of `value` (Python bytes = payload)."""
        body = pack(value)
        decoded = decode_frame(frame(body), frm, max_frame or DEFAULT_MAX_FRAME)
        require(encode_json(decoded) == body, f"{cid}: canonical round trip")
        self._add(cid, desc, frm, body, max_frame, valid=True, decoded=decoded)

    def alt(self, cid, desc, frm, body, same_as):
        """A valid, non-canonical body that decodes to the same frame as `same_as` (canonical)."""
        decoded = decode_frame(frame(body), frm)
        canonical = pack(same_as)
        require(decoded == decode_frame(frame(canonical), frm), f"{cid}: decodes to its twin")
        require(encode_json(decoded) == canonical != body, f"{cid}: non-canonical bytes")
        self._add(cid, desc, frm, body, None, valid=True, decoded=decoded, canonical=False)

    def bad(self, cid, desc, frm, body, error, max_frame=None):
        require(error in ERRORS, error)
        try:
            got = decode_frame(frame(body), frm, max_frame or DEFAULT_MAX_FRAME)
        except WireError as e:
            got = e.args[0]
        require(got == error, f"{cid}: expected {error}, reference decoder gives {got}")
        self._add(cid, desc, frm, body, max_frame, valid=False, error=error)


AUTH = {"method": "token", "token": "s3cr3t"}
HELLO_OPTS = {"max_frame": 1114112, "heartbeat_ms": 15000, "lang": "python", "version": "0.1.0"}
LIMITS = {
    "max_frame": 1114112, "max_payload": 1048576, "heartbeat_ms": 15000, "max_subs": 1000,
    "max_inflight": 100, "max_pending": 8388608, "request_timeout_ms": 5000,
    "max_timeout_ms": 60000,
}
SESSION = "6Jc0lW3hS9kQ2xP8aVbN4e"
TENANT = {"busgate-tenant": "acme"}
BINARY = b"\xff\xfe\x00\x01"
LONG_SUBJECT = ("x" * 15 + ".") * 15 + "x" * 16  # 256 bytes


def handshake() -> Area:
    a = Area("handshake")
    a.ok("1.1.1", "HELLO, minimal: versions and token auth", C, [1, [1], AUTH])
    a.ok("1.1.2", "HELLO with a client name", C, [1, [1], AUTH, "py-worker"])
    a.ok("1.1.3", "HELLO with name and all opts", C, [1, [1], AUTH, "py-worker", HELLO_OPTS])
    a.ok("1.1.4", "HELLO with opts and no name (nil before a present field)", C,
         [1, [1], AUTH, None, {"heartbeat_ms": 5000}])
    a.ok("1.1.5", "HELLO offering versions 2 and 1", C, [1, [2, 1], AUTH])
    a.ok("1.1.6", "HELLO with an auth method other than token (the method is a session rule)", C,
         [1, [1], {"method": "x-example", "credential": "abc"}])
    a.alt("1.1.7", "HELLO with explicit trailing nils", C,
          cat(ARR(5), 1, [1], AUTH, NIL, NIL), [1, [1], AUTH])
    a.alt("1.1.8", "HELLO with opts heartbeat_ms as uint32 where uint16 suffices", C,
          cat(ARR(5), 1, [1], AUTH, NIL, MAP(1), "heartbeat_ms", U32(5000)),
          [1, [1], AUTH, None, {"heartbeat_ms": 5000}])
    a.alt("1.1.9", "HELLO with an unknown extra trailing field", C,
          cat(ARR(6), 1, [1], AUTH, "py-worker", {}, "future"), [1, [1], AUTH, "py-worker", {}])
    a.ok("1.2.1", "WELCOME with every limits key", G,
         [2, 1, SESSION, "gw-1", "acme", LIMITS])
    a.ok("1.2.2", "WELCOME with an extra limits key clients must ignore", G,
         [2, 1, SESSION, "gw-1", "acme", {**LIMITS, "max_headers": 64}])
    a.alt("1.2.3", "WELCOME with an unknown extra trailing field", G,
          cat(ARR(7), 2, 1, SESSION, "gw-1", "acme", LIMITS, True),
          [2, 1, SESSION, "gw-1", "acme", LIMITS])
    a.alt("1.2.4", "WELCOME with version as uint64 and the limits map as map16", G,
          cat(ARR(6), 2, U64(1), SESSION, "gw-1", "acme", MAP16(1), "max_frame", 1114112),
          [2, 1, SESSION, "gw-1", "acme", {"max_frame": 1114112}])
    return a


def pubsub() -> Area:
    a = Area("pubsub")
    a.ok("2.1.1", "PUB, minimal", C, [3, "orders.created", b"hello"])
    a.ok("2.1.2", "PUB with an empty payload", C, [3, "orders.created", b""])
    a.ok("2.1.3", "PUB with headers", C, [3, "orders.created", b"hello", {"trace-id": "abc123"}])
    a.ok("2.1.4", "PUB with reply_to and no headers (nil headers)", C,
         [3, "svc.echo", b"ping", None, "replies.worker-1.7"])
    a.ok("2.1.5", "PUB with an ack id only", C, [3, "orders.created", b"hello", None, None, 7])
    a.ok("2.1.6", "PUB with every field", C,
         [3, "orders.created", b"hello", {"trace-id": "abc123"}, "replies.worker-1.7", 7])
    a.ok("2.1.7", "PUB with a payload that is not UTF-8 (JSON: base64 object)", C,
         [3, "blobs.raw", BINARY])
    a.ok("2.1.8", "PUB to a subject of exactly 256 bytes", C, [3, LONG_SUBJECT, b"x"])
    a.ok("2.1.9", "PUB to a subject with non-ASCII UTF-8 tokens", C, [3, "café.commandé", b"x"])
    a.ok("2.1.10", "PUB to an _INBOX. subject (codec-valid; the grant is a session rule)", C,
         [3, "_INBOX.gw1.aZ3kq.17", b"answer"])
    a.ok("2.1.11", "PUB header at the limits: key 64 bytes, value 4096 bytes", C,
         [3, "a.b", b"x", {"k" * 64: "v" * 4096}])
    a.ok("2.1.12", "PUB with 64 headers (the maximum), keys using - _ . and digits", C,
         [3, "a.b", b"x", {f"x-h_{i:02}.k": "" for i in range(64)}])
    a.ok("2.1.13", "PUB whose frame is exactly max_frame bytes", C, [3, "a.b", b"01234567"],
         max_frame=16)
    a.ok("2.1.14", "PUB with a header key that starts with busgate but not busgate-", C,
         [3, "a.b", b"x", {"busgatex": "1"}])
    a.alt("2.1.15", "PUB with the payload as bin16 where bin8 suffices", C,
          cat(ARR(3), 3, "orders.created", BIN16(b"hello")), [3, "orders.created", b"hello"])
    a.alt("2.1.16", "PUB with the subject as str8 where fixstr suffices", C,
          cat(ARR(3), 3, STR8("orders.created"), b"hello"), [3, "orders.created", b"hello"])
    a.alt("2.1.17", "PUB with an empty headers map (means no headers)", C,
          cat(ARR(4), 3, "orders.created", b"hello", MAP(0)), [3, "orders.created", b"hello"])
    a.alt("2.1.18", "PUB with explicit trailing nils", C,
          cat(ARR(6), 3, "orders.created", b"hello", NIL, NIL, NIL),
          [3, "orders.created", b"hello"])
    a.alt("2.1.19", "PUB with unknown extra trailing fields after absent optionals", C,
          cat(ARR(9), 3, "orders.created", b"hello", NIL, NIL, NIL, NIL, "x", {"y": 1}),
          [3, "orders.created", b"hello"])
    a.alt("2.1.20", "PUB with ack as uint32 where a fixint suffices", C,
          cat(ARR(6), 3, "orders.created", b"hello", NIL, NIL, U32(7)),
          [3, "orders.created", b"hello", None, None, 7])
    a.alt("2.1.21", "PUB with ack as a signed int8 holding a non-negative value", C,
          cat(ARR(6), 3, "orders.created", b"hello", NIL, NIL, I8(7)),
          [3, "orders.created", b"hello", None, None, 7])
    a.alt("2.1.22", "PUB with the body array as array16", C,
          cat(ARR16(3), 3, "orders.created", b"hello"), [3, "orders.created", b"hello"])
    a.alt("2.1.23", "PUB with an empty headers map before a present reply_to", C,
          cat(ARR(5), 3, "svc.echo", b"ping", MAP(0), "replies.worker-1.7"),
          [3, "svc.echo", b"ping", None, "replies.worker-1.7"])
    a.alt("2.1.24", "PUB with an explicit ack 0 (no ack)", C,
          cat(ARR(6), 3, "orders.created", b"hello", NIL, NIL, 0), [3, "orders.created", b"hello"])

    a.ok("2.2.1", "SUB, minimal, with a * wildcard", C, [4, 1, "orders.*"])
    a.ok("2.2.2", "SUB to > (everything in the tenant's namespace)", C, [4, 2, ">"])
    a.ok("2.2.3", "SUB with * and > in one subject", C, [4, 3, "a.*.c.>"])
    a.ok("2.2.4", "SUB with a queue group", C, [4, 4, "jobs.resize", "workers"])
    a.ok("2.2.5", "SUB with a queue group of 64 bytes (the maximum)", C,
         [4, 5, "jobs.resize", "q" * 64])
    a.ok("2.2.6", "SUB with opts and no queue (nil queue)", C,
         [4, 6, "jobs.>", None, {"max_inflight": 10}])
    a.ok("2.2.7", "SUB with queue and opts", C, [4, 7, "jobs.>", "workers", {"max_inflight": 10}])
    a.ok("2.2.8", "SUB with the largest sid (uint32 max)", C, [4, 4294967295, "a.b"])
    a.alt("2.2.9", "SUB with sid as uint16 where a fixint suffices", C,
          cat(ARR(3), 4, U16(1), "orders.*"), [4, 1, "orders.*"])
    a.alt("2.2.10", "SUB with an explicit trailing nil queue", C,
          cat(ARR(4), 4, 1, "orders.*", NIL), [4, 1, "orders.*"])

    a.ok("2.3.1", "UNSUB now", C, [5, 1])
    a.ok("2.3.2", "UNSUB after 10 more messages", C, [5, 1, 10])
    a.alt("2.3.3", "UNSUB with max_msgs as uint64", C, cat(ARR(3), 5, 1, U64(10)), [5, 1, 10])
    a.alt("2.3.4", "UNSUB with an explicit max_msgs 0 (remove now)", C, cat(ARR(3), 5, 1, 0),
          [5, 1])

    a.ok("2.4.1", "MSG, minimal (no headers)", G, [6, 1, "orders.created", b"hello"])
    a.ok("2.4.2", "MSG with the gateway-set busgate-tenant header", G,
         [6, 1, "orders.created", b"hello", TENANT])
    a.ok("2.4.3", "MSG with headers and an _INBOX. reply_to", G,
         [6, 4, "svc.echo", b"ping", TENANT, "_INBOX.gw1.aZ3kq.17"])
    a.ok("2.4.4", "MSG with reply_to and no headers (nil headers)", G,
         [6, 4, "svc.echo", b"ping", None, "replies.worker-1.7"])
    a.ok("2.4.5", "MSG with a payload that is not UTF-8", G,
         [6, 1, "blobs.raw", BINARY, TENANT])
    a.ok("2.4.6", "MSG from the gateway is not grammar-checked: Busgate- headers are valid", G,
         [6, 1, "orders.created", b"hello", {"busgate-tenant": "shared", "Busgate-Foo": "1"}])
    a.alt("2.4.7", "MSG with an empty headers map", G,
          cat(ARR(5), 6, 1, "orders.created", b"hello", MAP(0)),
          [6, 1, "orders.created", b"hello"])
    a.alt("2.4.8", "MSG with explicit trailing nils and an unknown extra field", G,
          cat(ARR(9), 6, 1, "orders.created", b"hello", TENANT, NIL, NIL, NIL, 42),
          [6, 1, "orders.created", b"hello", TENANT])
    return a


def request() -> Area:
    a = Area("request")
    a.ok("3.1.1", "REQ, minimal", C, [7, 1, "svc.echo", b"ping"])
    a.ok("3.1.2", "REQ with headers", C, [7, 2, "svc.echo", b"ping", {"trace-id": "abc123"}])
    a.ok("3.1.3", "REQ with a timeout and no headers (nil headers)", C,
         [7, 3, "svc.echo", b"ping", None, 2500])
    a.ok("3.1.4", "REQ with every field", C,
         [7, 4, "data.query.users", b'{"id":42}', {"trace-id": "abc123"}, 2500])
    a.ok("3.1.5", "REQ with a payload that is not UTF-8", C, [7, 5, "svc.blob", BINARY])
    a.ok("3.1.6", "REQ with the largest req_id (uint32 max)", C,
         [7, 4294967295, "svc.echo", b"ping"])
    a.ok("3.1.7", "REQ with an empty payload", C, [7, 6, "svc.time", b""])
    a.alt("3.1.8", "REQ with timeout_ms as uint64", C,
          cat(ARR(6), 7, 3, "svc.echo", b"ping", NIL, U64(2500)),
          [7, 3, "svc.echo", b"ping", None, 2500])
    a.alt("3.1.9", "REQ with an empty headers map and a trailing nil", C,
          cat(ARR(6), 7, 1, "svc.echo", b"ping", MAP(0), NIL), [7, 1, "svc.echo", b"ping"])
    a.alt("3.1.10", "REQ with an explicit timeout_ms 0 (gateway default)", C,
          cat(ARR(6), 7, 1, "svc.echo", b"ping", NIL, 0), [7, 1, "svc.echo", b"ping"])

    a.ok("3.2.1", "RES, a reply (status 0)", G, [8, 1, 0, b"pong"])
    a.ok("3.2.2", "RES, a reply with the responder's headers", G,
         [8, 2, 0, b"pong", {"busgate-tenant": "acme", "trace-id": "abc123"}])
    a.ok("3.2.3", "RES, a reply with an empty payload", G, [8, 6, 0, b""])
    a.ok("3.2.4", "RES, a reply with a payload that is not UTF-8", G, [8, 5, 0, BINARY])
    a.ok("3.2.5", "RES NO_RESPONDERS", G, [8, 7, E["NO_RESPONDERS"], b"no responders"])
    a.ok("3.2.6", "RES REQUEST_TIMEOUT", G,
         [8, 3, E["REQUEST_TIMEOUT"], b"timed out after 2500 ms"])
    a.ok("3.2.7", "RES TOO_MANY_REQUESTS", G,
         [8, 8, E["TOO_MANY_REQUESTS"], b"tenant has 100 requests in flight"])
    a.ok("3.2.8", "RES DUPLICATE_REQUEST_ID", G,
         [8, 1, E["DUPLICATE_REQUEST_ID"], b"req_id 1 is in flight"])
    a.ok("3.2.9", "RES INVALID_SUBJECT (codec validation of a REQ, answered as RES)", G,
         [8, 9, E["INVALID_SUBJECT"], b"empty token in subject"])
    a.ok("3.2.10", "RES RESERVED_HEADER", G,
         [8, 10, E["RESERVED_HEADER"], b"header busgate-tenant is reserved"])
    a.ok("3.2.11", "RES PERMISSION_DENIED", G,
         [8, 11, E["PERMISSION_DENIED"], b"no permission to request billing.charge"])
    a.ok("3.2.12", "RES SHUTTING_DOWN", G, [8, 12, E["SHUTTING_DOWN"], b"gateway is draining"])
    a.alt("3.2.13", "RES with status 0 as uint16", G, cat(ARR(4), 8, 1, U16(0), b"pong"),
          [8, 1, 0, b"pong"])
    a.alt("3.2.14", "RES with an unknown extra trailing field", G,
          cat(ARR(6), 8, 1, 0, b"pong", NIL, "future"), [8, 1, 0, b"pong"])
    return a


def control() -> Area:
    a = Area("control")
    a.ok("4.1.1", "OK for a PUB with ack 7", G, [9, OP["PUB"], 7])
    a.ok("4.1.2", "OK for SUB sid 1", G, [9, OP["SUB"], 1])
    a.alt("4.1.3", "OK with ref_id as uint32", G, cat(ARR(3), 9, 4, U32(1)), [9, 4, 1])

    a.ok("4.2.1", "ERR INVALID_SUBJECT for a PUB with ack 7", G,
         [10, E["INVALID_SUBJECT"], "invalid subject: empty token", OP["PUB"], 7])
    a.ok("4.2.2", "ERR RATE_LIMITED for a PUB without ack (ref_id absent, i.e. 0)", G,
         [10, E["RATE_LIMITED"], "publish rate exceeded; message dropped", OP["PUB"]])
    a.ok("4.2.3", "ERR SID_IN_USE for SUB sid 1", G,
         [10, E["SID_IN_USE"], "sid 1 is in use", OP["SUB"], 1])
    a.ok("4.2.4", "ERR NOT_SUPPORTED for SUB opts", G,
         [10, E["NOT_SUPPORTED"], "durable consumption is not supported", OP["SUB"], 6])
    a.ok("4.2.5", "ERR UNKNOWN_OP names the unknown op code", G,
         [10, E["UNKNOWN_OP"], "unknown op 99", 99])
    a.ok("4.2.6", "ERR NOT_BUSGATE (fatal; connection-level, no ref)", G,
         [10, E["NOT_BUSGATE"], "not busgate framing"])
    a.ok("4.2.7", "ERR AUTH_FAILED (fatal)", G, [10, E["AUTH_FAILED"], "authentication failed"])
    a.ok("4.2.8", "ERR UNSUPPORTED_VERSION lists the gateway's versions", G,
         [10, E["UNSUPPORTED_VERSION"], "no common version; gateway speaks [1]", OP["HELLO"]])
    a.ok("4.2.9", "ERR HANDSHAKE_REQUIRED", G,
         [10, E["HANDSHAKE_REQUIRED"], "first frame must be HELLO", OP["PUB"]])
    a.ok("4.2.10", "ERR SLOW_CONSUMER_WARNING (connection-level)", G,
         [10, E["SLOW_CONSUMER_WARNING"], "outbound queue above half of max_pending"])
    a.ok("4.2.11", "ERR SHUTTING_DOWN at the drain deadline", G,
         [10, E["SHUTTING_DOWN"], "drain deadline reached"])
    a.ok("4.2.12", "ERR IDLE_TIMEOUT", G, [10, E["IDLE_TIMEOUT"], "no frame for 30000 ms"])
    a.ok("4.2.13", "ERR with a code unknown to this version (decodes; forward compatible)", G,
         [10, 999, "something new"])
    a.alt("4.2.14", "ERR with explicit trailing nils", G,
          cat(ARR(5), 10, E["AUTH_FAILED"], "authentication failed", NIL, NIL),
          [10, E["AUTH_FAILED"], "authentication failed"])
    a.alt("4.2.15", "ERR with an explicit ref_id 0 (an optional uint of 0 is absent)", G,
          cat(ARR(5), 10, E["RATE_LIMITED"], "publish rate exceeded; message dropped", 3, 0),
          [10, E["RATE_LIMITED"], "publish rate exceeded; message dropped", 3])
    a.ok("4.2.16", "ERR INVALID_OPTION for a durable SUB with a bad option value", G,
         [10, E["INVALID_OPTION"], "opts.ack must be \"explicit\"", OP["SUB"], 20])
    a.ok("4.2.17", "ERR UNKNOWN_DELIVERY for an ACK of a delivery that is not outstanding", G,
         [10, E["UNKNOWN_DELIVERY"], "delivery 9 is not outstanding on sid 20", OP["ACK"], 20])
    a.ok("4.2.18", "ERR UNKNOWN_STREAM for a durable SUB no stream stores", G,
         [10, E["UNKNOWN_STREAM"], "no stream stores scratch.>", OP["SUB"], 21])
    a.ok("4.2.19", "ERR TOO_MANY_CONSUMERS for a SUB that would create one consumer too many", G,
         [10, E["TOO_MANY_CONSUMERS"], "the tenant has 10 consumers", OP["SUB"], 22])
    a.ok("4.2.20", "ERR NOT_STORED for a PUB with ack 7 to a full stream", G,
         [10, E["NOT_STORED"], "stream jobs is full", OP["PUB"], 7])
    a.ok("4.2.21", "ERR UNKNOWN_SID for a TERM on a sid that is not live", G,
         [10, E["UNKNOWN_SID"], "sid 20 is not a live durable subscription", OP["TERM"], 20])

    a.ok("4.3.1", "PING from a client", C, [11])
    a.ok("4.3.2", "PING from the gateway", G, [11])
    a.alt("4.3.3", "PING with an unknown extra field", C, cat(ARR(2), 11, "x"), [11])
    a.ok("4.4.1", "PONG from the gateway", G, [12])
    a.ok("4.4.2", "PONG from a client", C, [12])
    a.alt("4.4.3", "PONG as array16", G, cat(ARR16(1), 12), [12])

    a.ok("4.5.1", "GOAWAY, reconnect to the same address within 30 s", G,
         [13, 30000, "node draining"])
    a.ok("4.5.2", "GOAWAY with servers to reconnect to", G,
         [13, 30000, "node draining", ["busgate://gw-2.internal", "busgate+tls://gw-3:7422"]])
    a.alt("4.5.3", "GOAWAY with delay_ms as uint64 and a trailing nil", G,
          cat(ARR(4), 13, U64(30000), "node draining", NIL), [13, 30000, "node draining"])
    a.alt("4.5.4", "GOAWAY with an empty servers array (means none given)", G,
          cat(ARR(4), 13, 30000, "node draining", ARR(0)), [13, 30000, "node draining"])
    return a


def durable() -> Area:
    a = Area("durable")
    a.ok("5.1.1", "SUB with every durable option", C,
         [4, 20, "jobs.>", "workers", {"durable": "resizer", "ack": "explicit",
                                       "max_inflight": 10, "deliver": "all", "flow": "credit"}])
    a.ok("5.1.2", "SUB with ack none and deliver new", C,
         [4, 21, "events.>", None, {"ack": "none", "deliver": "new"}])
    a.ok("5.1.3", "durable SUB, minimal: only the consumer's name", C,
         [4, 22, "jobs.thumbs", None, {"durable": "thumbs"}])
    a.ok("5.1.4", "durable SUB starting with new messages, own max_inflight", C,
         [4, 23, "jobs.crop", None, {"durable": "cropper", "deliver": "new", "max_inflight": 1}])
    a.alt("5.1.5", "durable SUB with max_inflight as uint32 and the opts map as map16", C,
          cat(ARR(5), 4, 22, "jobs.thumbs", NIL, MAP16(2), "durable", "thumbs", "max_inflight", U32(4)),
          [4, 22, "jobs.thumbs", None, {"durable": "thumbs", "max_inflight": 4}])
    a.ok("5.2.1", "MSG with a delivery_id", G,
         [6, 20, "jobs.resize", b"img-1", TENANT, None, 1])
    a.ok("5.2.2", "MSG on a durable subscription: delivery_id 1, attempt 1", G,
         [6, 20, "jobs.resize", b"img-1", TENANT, None, 1, 1])
    a.ok("5.2.3", "MSG with the largest JSON-safe delivery_id (2^53 - 1)", G,
         [6, 20, "jobs.resize", b"img-1", TENANT, None, 2**53 - 1])
    a.ok("5.2.4", "MSG redelivered: attempt 3, no headers (nil headers and reply_to)", G,
         [6, 20, "jobs.resize", b"img-1", None, None, 42, 3])
    a.ok("5.2.5", "MSG with every field: binary payload, headers, reply_to, delivery_id, attempt", G,
         [6, 20, "jobs.resize", BINARY, {"busgate-tenant": "acme", "trace-id": "abc123"},
          "replies.worker-1.7", 2**53 - 1, 2])
    a.alt("5.2.6", "MSG with attempt as uint16 where a fixint suffices", G,
          cat(ARR(8), 6, 20, "jobs.resize", b"img-1", TENANT, NIL, 1, U16(2)),
          [6, 20, "jobs.resize", b"img-1", TENANT, None, 1, 2])
    a.alt("5.2.7", "MSG with an explicit attempt 0 (an optional uint of 0 is absent)", G,
          cat(ARR(8), 6, 20, "jobs.resize", b"img-1", TENANT, NIL, 1, 0),
          [6, 20, "jobs.resize", b"img-1", TENANT, None, 1])
    a.alt("5.2.8", "MSG with attempt and an unknown extra trailing field", G,
          cat(ARR(9), 6, 20, "jobs.resize", b"img-1", TENANT, NIL, 1, 1, "future"),
          [6, 20, "jobs.resize", b"img-1", TENANT, None, 1, 1])
    a.ok("5.3.1", "ACK", C, [14, 20, 1])
    a.ok("5.3.2", "ACK with a delivery_id of 2^53 - 1", C, [14, 20, 2**53 - 1])
    a.alt("5.3.3", "ACK with delivery_id as uint64 where a fixint suffices", C,
          cat(ARR(3), 14, 20, U64(1)), [14, 20, 1])
    a.ok("5.4.1", "NAK, redeliver now", C, [15, 20, 1])
    a.ok("5.4.2", "NAK, redeliver after 5000 ms", C, [15, 20, 1, 5000])
    a.alt("5.4.3", "NAK with an explicit trailing nil delay", C, cat(ARR(4), 15, 20, 1, NIL),
          [15, 20, 1])
    a.alt("5.4.4", "NAK with an explicit delay_ms 0 (redeliver now)", C, cat(ARR(4), 15, 20, 1, 0),
          [15, 20, 1])
    a.ok("5.5.1", "CREDIT 100", C, [16, 20, 100])
    a.alt("5.5.2", "CREDIT with credits as uint32", C, cat(ARR(3), 16, 20, U32(100)), [16, 20, 100])
    a.ok("5.6.1", "PROGRESS", C, [17, 20, 1])
    a.ok("5.6.2", "PROGRESS with a delivery_id of 2^53 - 1", C, [17, 20, 2**53 - 1])
    a.alt("5.6.3", "PROGRESS with delivery_id as uint64 where a fixint suffices", C,
          cat(ARR(3), 17, 20, U64(1)), [17, 20, 1])
    a.alt("5.6.4", "PROGRESS with an unknown extra trailing field", C,
          cat(ARR(4), 17, 20, 1, "future"), [17, 20, 1])
    a.ok("5.7.1", "TERM without a reason", C, [18, 20, 1])
    a.ok("5.7.2", "TERM with a reason", C, [18, 20, 1, "corrupt image"])
    a.ok("5.7.3", "TERM with a non-ASCII UTF-8 reason", C, [18, 20, 7, "en-tête illisible"])
    a.alt("5.7.4", "TERM with an explicit trailing nil reason", C, cat(ARR(4), 18, 20, 1, NIL),
          [18, 20, 1])
    a.alt("5.7.5", "TERM with the reason as str8 where fixstr suffices", C,
          cat(ARR(4), 18, 20, 1, STR8("corrupt image")), [18, 20, 1, "corrupt image"])
    a.ok("5.8.1", "PUB with an ack id and a msg_id", C,
         [3, "orders.created", b"hello", None, None, 7, "order-42"])
    a.ok("5.8.2", "PUB with a msg_id and no ack (nil ack)", C,
         [3, "orders.created", b"hello", None, None, None, "order-42"])
    a.ok("5.8.3", "PUB with every field, msg_id included", C,
         [3, "orders.created", b"hello", {"trace-id": "abc123"}, "replies.worker-1.7", 7, "order-42"])
    a.alt("5.8.4", "PUB with an explicit ack 0 before a msg_id", C,
          cat(ARR(7), 3, "orders.created", b"hello", NIL, NIL, 0, "order-42"),
          [3, "orders.created", b"hello", None, None, None, "order-42"])
    a.alt("5.8.5", "PUB with msg_id and explicit trailing nils after it", C,
          cat(ARR(9), 3, "orders.created", b"hello", NIL, NIL, 7, "order-42", NIL, NIL),
          [3, "orders.created", b"hello", None, None, 7, "order-42"])
    return a


def invalid() -> Area:
    a = Area("invalid")
    mf = "MALFORMED_FRAME"
    pub = [3, "orders.created", b"hello"]

    a.bad("6.1.1", "zero-length frame", C, b"", mf)
    a.bad("6.1.2", "length prefix above max_frame (17 > 16)", C, pack([3, "a.b", b"012345678"]),
          "FRAME_TOO_LARGE", max_frame=16)
    a.bad("6.1.3", "length prefix above max_frame, from the gateway", G,
          pack([6, 1, "a.b", b"01234567"]), "FRAME_TOO_LARGE", max_frame=16)

    a.bad("6.2.1", "body is the never-used byte 0xc1", C, Raw(b"\xc1"), mf)
    a.bad("6.2.2", "array claims 3 elements, 2 present", C, cat(ARR(3), 3, "a.b"), mf)
    a.bad("6.2.3", "msgpack truncated inside a str", C, cat(ARR(3), 3, Raw(b"\xa8orders")), mf)
    a.bad("6.2.4", "trailing bytes after the array", C, cat(ARR(3), 3, "a.b", b"x", 0), mf)
    a.bad("6.2.5", "trailing second array after the first", G, cat(ARR(1), 11, ARR(1), 11), mf)
    a.bad("6.2.6", "str that is not valid UTF-8", C, cat(ARR(3), 3, Raw(b"\xa2\xc3\x28"), b"x"), mf)
    a.bad("6.2.7", "0xc1 inside the array", C, cat(ARR(3), 3, "a.b", Raw(b"\xc1")), mf)
    a.bad("6.2.8", "msgpack ext value in an unknown trailing field (ext is never used)", G,
          cat(ARR(2), 11, Raw(b"\xd4\x01\x00")), mf)

    a.bad("6.3.1", "body is a map, not an array", C, pack({"op": 3}), mf)
    a.bad("6.3.2", "body is an integer", C, pack(11), mf)
    a.bad("6.3.3", "body is an empty array", C, pack([]), mf)
    a.bad("6.3.4", "op is a str", C, pack(["PING"]), mf)
    a.bad("6.3.5", "op is negative", C, pack([-1]), mf)
    a.bad("6.3.6", "op is nil", C, pack([None]), mf)
    a.bad("6.3.7", "op is a float", C, cat(ARR(1), F64(11.0)), mf)

    a.bad("6.4.1", "unknown op 99 from a client", C, pack([99, "x"]), "UNKNOWN_OP")
    a.bad("6.4.2", "unknown op 99 from the gateway", G, pack([99]), "UNKNOWN_OP")
    a.bad("6.4.3", "op 0 is not in the table", C, pack([0]), "UNKNOWN_OP")
    a.bad("6.4.4", "MSG from a client", C, pack([6, 1, "orders.created", b"hello"]),
          "UNEXPECTED_OP")
    a.bad("6.4.5", "WELCOME from a client", C, pack([2, 1, SESSION, "gw-1", "acme", LIMITS]),
          "UNEXPECTED_OP")
    a.bad("6.4.6", "OK from a client", C, pack([9, 3, 7]), "UNEXPECTED_OP")
    a.bad("6.4.7", "ERR from a client", C, pack([10, 100, "bad"]), "UNEXPECTED_OP")
    a.bad("6.4.8", "HELLO from the gateway", G, pack([1, [1], AUTH]), "UNEXPECTED_OP")
    a.bad("6.4.9", "PUB from the gateway", G, pack(pub), "UNEXPECTED_OP")
    a.bad("6.4.10", "ACK from the gateway", G, pack([14, 20, 1]), "UNEXPECTED_OP")
    # The body is checked as msgpack before the op is looked up (section 3.4): an unknown op with a
    # malformed body is MALFORMED_FRAME, not UNKNOWN_OP.
    a.bad("6.4.11", "unknown op 99 followed by the never-used byte c1", C, bytes([0x92, 0x63, 0xC1]), mf)
    a.bad("6.4.12", "unknown op 99 with a str that is not UTF-8", G, bytes([0x92, 0x63, 0xA1, 0xFF]), mf)
    a.bad("6.4.13", "unknown op 99 with a field missing (array of 3, 2 present)", C,
          bytes([0x93, 0x63, 0x01]), mf)
    a.bad("6.4.14", "op 19, the first code after TERM, from a client", C, pack([19, 20, 1]),
          "UNKNOWN_OP")
    a.bad("6.4.15", "op 19 from the gateway", G, pack([19, 20, 1]), "UNKNOWN_OP")
    a.bad("6.4.16", "PROGRESS from the gateway", G, pack([17, 20, 1]), "UNEXPECTED_OP")
    a.bad("6.4.17", "TERM from the gateway", G, pack([18, 20, 1, "why"]), "UNEXPECTED_OP")

    a.bad("6.5.1", "PUB payload as str instead of bin", C, pack([3, "orders.created", "hello"]), mf)
    a.bad("6.5.2", "MSG payload as str instead of bin (types are checked in both directions)", G,
          pack([6, 1, "orders.created", "hello"]), mf)
    a.bad("6.5.3", "SUB sid as str", C, pack([4, "1", "orders.*"]), mf)
    a.bad("6.5.4", "SUB sid negative", C, pack([4, -1, "orders.*"]), mf)
    a.bad("6.5.5", "SUB sid as a float", C, cat(ARR(3), 4, F64(1.0), "orders.*"), mf)
    a.bad("6.5.6", "SUB sid above uint32", C, pack([4, 2**32, "orders.*"]), mf)
    a.bad("6.5.7", "SUB sid as a boolean", C, pack([4, True, "orders.*"]), mf)
    a.bad("6.5.8", "PUB subject as bin", C, pack([3, b"orders.created", b"hello"]), mf)
    a.bad("6.5.9", "PUB missing its payload", C, pack([3, "orders.created"]), mf)
    a.bad("6.5.10", "PUB payload nil", C, pack([3, "orders.created", None]), mf)
    a.bad("6.5.11", "UNSUB missing its sid", C, pack([5]), mf)
    a.bad("6.5.12", "ACK missing delivery_id", C, pack([14, 20]), mf)
    a.bad("6.5.13", "CREDIT with negative credits", C, pack([16, 20, -5]), mf)
    a.bad("6.5.14", "REQ timeout_ms negative", C, pack([7, 1, "svc.echo", b"x", None, -1]), mf)
    a.bad("6.5.15", "PUB headers as an array", C, pack(pub + [["trace-id", "abc"]]), mf)
    a.bad("6.5.16", "PUB header value not a str", C, pack(pub + [{"retries": 3}]), mf)
    a.bad("6.5.17", "PUB header key not a str", C, cat(ARR(4), *pub, MAP(1), 1, "v"), mf)
    a.bad("6.5.18", "PUB headers with a duplicate key", C,
          cat(ARR(4), *pub, MAP(2), "a", "1", "a", "2"), mf)
    a.bad("6.5.19", "HELLO with an empty versions array", C, pack([1, [], AUTH]), mf)
    a.bad("6.5.20", "HELLO versions not an array", C, pack([1, 1, AUTH]), mf)
    a.bad("6.5.21", "HELLO versions holding a str", C, pack([1, ["1"], AUTH]), mf)
    a.bad("6.5.22", "HELLO auth not a map", C, pack([1, [1], "s3cr3t"]), mf)
    a.bad("6.5.23", "HELLO missing auth", C, pack([1, [1]]), mf)
    a.bad("6.5.24", "WELCOME missing limits", G, pack([2, 1, SESSION, "gw-1", "acme"]), mf)
    a.bad("6.5.25", "RES status as str", G, pack([8, 1, "0", b"pong"]), mf)
    a.bad("6.5.26", "ERR message as bin", G, pack([10, 100, b"bad"]), mf)
    a.bad("6.5.27", "GOAWAY servers not an array", G,
          pack([13, 1000, "bye", "busgate://gw-2:7422"]), mf)
    a.bad("6.5.28", "OK missing ref_id", G, pack([9, 3]), mf)
    a.bad("6.5.29", "SUB opts not a map", C, pack([4, 1, "a", None, ["durable"]]), mf)
    a.bad("6.5.30", "SUB opts holding a bin value", C, pack([4, 1, "a", None, {"durable": b"x"}]),
          mf)
    a.bad("6.5.31", "HELLO versions as a map", C, pack([1, {"v": 1}, AUTH]), mf)
    a.bad("6.5.32", "PROGRESS missing delivery_id", C, pack([17, 20]), mf)
    a.bad("6.5.33", "PROGRESS with no fields", C, pack([17]), mf)
    a.bad("6.5.34", "PROGRESS delivery_id as str", C, pack([17, 20, "1"]), mf)
    a.bad("6.5.35", "PROGRESS sid negative", C, pack([17, -20, 1]), mf)
    a.bad("6.5.36", "PROGRESS delivery_id nil", C, pack([17, 20, None]), mf)
    a.bad("6.5.37", "TERM missing delivery_id", C, pack([18, 20]), mf)
    a.bad("6.5.38", "TERM reason as an integer", C, pack([18, 20, 1, 5]), mf)
    a.bad("6.5.39", "TERM reason as bin", C, pack([18, 20, 1, b"corrupt image"]), mf)
    a.bad("6.5.40", "TERM sid above uint32", C, pack([18, 2**32, 1]), mf)
    a.bad("6.5.41", "TERM delivery_id as a float", C, cat(ARR(3), 18, 20, F64(1.0)), mf)
    a.bad("6.5.42", "TERM reason as a map", C, pack([18, 20, 1, {"why": "corrupt"}]), mf)
    a.bad("6.5.43", "TERM reason that is not valid UTF-8", C,
          cat(ARR(4), 18, 20, 1, Raw(b"\xa2\xc3\x28")), mf)
    a.bad("6.5.44", "MSG attempt as str", G,
          pack([6, 20, "jobs.resize", b"img-1", TENANT, None, 1, "1"]), mf)
    a.bad("6.5.45", "MSG attempt negative", G,
          pack([6, 20, "jobs.resize", b"img-1", TENANT, None, 1, -1]), mf)
    a.bad("6.5.46", "PUB msg_id as an integer", C, pack(pub + [None, None, 7, 42]), mf)
    a.bad("6.5.47", "PUB msg_id as bin", C, pack(pub + [None, None, 7, b"order-42"]), mf)
    a.bad("6.5.48", "NAK delay_ms as str", C, pack([15, 20, 1, "5000"]), mf)
    a.bad("6.5.49", "ACK delivery_id negative", C, pack([14, 20, -1]), mf)

    a.bad("6.6.1", "PUB subject empty", C, pack([3, "", b"x"]), "INVALID_SUBJECT")
    a.bad("6.6.2", "PUB subject with an empty token", C, pack([3, "orders..created", b"x"]),
          "INVALID_SUBJECT")
    a.bad("6.6.3", "PUB subject with a leading dot", C, pack([3, ".orders", b"x"]),
          "INVALID_SUBJECT")
    a.bad("6.6.4", "PUB subject with a trailing dot", C, pack([3, "orders.", b"x"]),
          "INVALID_SUBJECT")
    a.bad("6.6.5", "PUB subject with a space", C, pack([3, "orders created", b"x"]),
          "INVALID_SUBJECT")
    a.bad("6.6.6", "PUB subject with a tab", C, pack([3, "orders\tcreated", b"x"]),
          "INVALID_SUBJECT")
    a.bad("6.6.7", "PUB subject with DEL (0x7f)", C, pack([3, "orders\x7f", b"x"]),
          "INVALID_SUBJECT")
    a.bad("6.6.8", "PUB subject of 257 bytes", C, pack([3, LONG_SUBJECT + "y", b"x"]),
          "INVALID_SUBJECT")
    a.bad("6.6.9", "SUB subject a* (wildcard inside a token)", C, pack([4, 1, "a*"]),
          "INVALID_SUBJECT")
    a.bad("6.6.10", "SUB subject >b", C, pack([4, 1, ">b"]), "INVALID_SUBJECT")
    a.bad("6.6.11", "SUB subject a.>.b (> not last)", C, pack([4, 1, "a.>.b"]), "INVALID_SUBJECT")
    a.bad("6.6.12", "SUB subject with an empty token", C, pack([4, 1, "a..*"]), "INVALID_SUBJECT")
    a.bad("6.6.13", "PUB reply_to with a trailing dot", C, pack(pub + [None, "replies."]),
          "INVALID_SUBJECT")
    a.bad("6.6.14", "REQ subject with a leading dot", C, pack([7, 1, ".svc", b"x"]),
          "INVALID_SUBJECT")
    a.bad("6.6.15", "SUB subject with a NUL byte", C, pack([4, 1, "a\x00b"]), "INVALID_SUBJECT")

    a.bad("6.7.1", "PUB subject with *", C, pack([3, "orders.*", b"x"]), "WILDCARD_NOT_ALLOWED")
    a.bad("6.7.2", "PUB subject >", C, pack([3, ">", b"x"]), "WILDCARD_NOT_ALLOWED")
    a.bad("6.7.3", "PUB reply_to with >", C, pack(pub + [None, "replies.>"]),
          "WILDCARD_NOT_ALLOWED")
    a.bad("6.7.4", "REQ subject with *", C, pack([7, 1, "svc.*", b"x"]), "WILDCARD_NOT_ALLOWED")

    a.bad("6.8.1", "PUB to a $-prefixed subject", C, pack([3, "$SYS.REQ.SERVER.PING", b""]),
          "RESERVED_SUBJECT")
    a.bad("6.8.2", "SUB to a $-prefixed subject with >", C, pack([4, 1, "$SYS.>"]),
          "RESERVED_SUBJECT")
    a.bad("6.8.3", "REQ to a $-prefixed subject", C, pack([7, 1, "$JS.API.INFO", b""]),
          "RESERVED_SUBJECT")
    a.bad("6.8.4", "PUB reply_to $-prefixed", C, pack(pub + [None, "$x.reply"]),
          "RESERVED_SUBJECT")

    a.bad("6.9.1", "PUB with busgate-tenant", C, pack(pub + [{"busgate-tenant": "other"}]),
          "RESERVED_HEADER")
    a.bad("6.9.2", "PUB with Busgate-Foo (prefix is case-insensitive)", C,
          pack(pub + [{"trace-id": "a", "Busgate-Foo": "1"}]), "RESERVED_HEADER")
    a.bad("6.9.3", "REQ with busgate-tenant", C,
          pack([7, 1, "svc.echo", b"x", {"busgate-tenant": "other"}]), "RESERVED_HEADER")
    a.bad("6.9.4", "REQ with BUSGATE-TRACE", C,
          pack([7, 1, "svc.echo", b"x", {"BUSGATE-TRACE": "1"}, 1000]), "RESERVED_HEADER")
    a.bad("6.9.5", "REQ with Busgate-Foo", C, pack([7, 1, "svc.echo", b"x", {"Busgate-Foo": "1"}]),
          "RESERVED_HEADER")

    ih = "INVALID_HEADER"
    a.bad("6.10.1", "header key empty", C, pack(pub + [{"": "v"}]), ih)
    a.bad("6.10.2", "header key with a space", C, pack(pub + [{"trace id": "v"}]), ih)
    a.bad("6.10.3", "header key with a colon", C, pack(pub + [{"trace:id": "v"}]), ih)
    a.bad("6.10.4", "header key not ASCII", C, pack(pub + [{"clé": "v"}]), ih)
    a.bad("6.10.5", "header key of 65 bytes", C, pack(pub + [{"k" * 65: "v"}]), ih)
    a.bad("6.10.6", "header value with LF", C, pack(pub + [{"k": "a\nb"}]), ih)
    a.bad("6.10.7", "header value with CR", C, pack(pub + [{"k": "a\rb"}]), ih)
    a.bad("6.10.8", "header value of 4097 bytes", C, pack(pub + [{"k": "v" * 4097}]), ih)
    a.bad("6.10.9", "65 headers", C, pack(pub + [{f"h{i:02}": "" for i in range(65)}]), ih)
    a.bad("6.10.10", "REQ header value with CRLF", C,
          pack([7, 1, "svc.echo", b"x", {"k": "a\r\nb"}]), ih)

    iq = "INVALID_QUEUE"
    a.bad("6.11.1", "queue empty", C, pack([4, 1, "jobs", ""]), iq)
    a.bad("6.11.2", "queue with a space", C, pack([4, 1, "jobs", "my workers"]), iq)
    a.bad("6.11.3", "queue with a dot", C, pack([4, 1, "jobs", "workers.a"]), iq)
    a.bad("6.11.4", "queue with *", C, pack([4, 1, "jobs", "work*"]), iq)
    a.bad("6.11.5", "queue >", C, pack([4, 1, "jobs", ">"]), iq)
    a.bad("6.11.6", "queue of 65 bytes", C, pack([4, 1, "jobs", "q" * 65]), iq)
    return a


AREAS = [handshake, pubsub, request, control, durable, invalid]

# --------------------------------------------------------------------------------------------------


DOCS = HERE.parent.parent / "docs" / "protocol.md"
# "vector `2.1.5` ... `[3,...]`" optionally followed by ":" and a code block holding one hex line.
DOC_EXAMPLE = re.compile(r"[Vv]ector `(\d+(?:\.\d+)+)`[^`\n]*(?:\n[^`\n]*)?`(\[[^`]*\])`"
                         r"(?:[^`\n]*:\n\n```\n([0-9a-f]+)\n```)?")


def check_docs(by_id: dict) -> list[str]:
    """Every example of docs/protocol.md that names a vector must show that vector's canonical JSON
    and, when it shows bytes, its hex."""
    if not DOCS.exists():
        return []
    problems = []
    for m in DOC_EXAMPLE.finditer(DOCS.read_text()):
        cid, text, hexs = m.group(1), m.group(2), m.group(3)
        case = by_id.get(cid)
        if case is None:
            problems.append(f"docs/protocol.md names vector {cid}, which does not exist")
            continue
        want = json.dumps(case.get("decoded"), separators=(",", ":"), ensure_ascii=False)
        if not case["valid"] or text != want:
            problems.append(f"docs/protocol.md: vector {cid} is {want}, the example shows {text}")
        if hexs is not None and hexs != case["hex"]:
            problems.append(f"docs/protocol.md: vector {cid} is {case['hex']}, the example shows {hexs}")
    return problems


def render(area: Area) -> str:
    return json.dumps({"area": area.name, "cases": area.cases}, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    check = argv[1:] == ["--check"]
    if argv[1:] and not check:
        print(__doc__, file=sys.stderr)
        return 2
    schema = json.loads((HERE / "schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    require(sorted(schema["$defs"]["error"]["enum"]) == sorted(ERRORS), "schema error names")

    seen: set[str] = set()
    by_id: dict[str, dict] = {}
    stale = []
    for make in AREAS:
        area = make()
        by_id.update((c["id"], c) for c in area.cases)
        ids = [tuple(map(int, c["id"].split("."))) for c in area.cases]
        require(ids == sorted(ids), f"{area.name}: case ids out of order")
        require(seen.isdisjoint(c["id"] for c in area.cases), f"{area.name}: duplicate id")
        seen.update(c["id"] for c in area.cases)
        text = render(area)
        validator.validate(json.loads(text))
        path = HERE / f"{area.name}.json"
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
        print(f"{path.name}: {len(area.cases)} cases")
    print(f"total: {len(seen)} cases")
    doc_problems = check_docs(by_id)
    for p in doc_problems:
        print(p, file=sys.stderr)
    if doc_problems:
        return 1
    if stale:
        print("stale (run generate.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
