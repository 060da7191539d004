"""The runner's own busgate v1 codec: framing, msgpack bodies, the JSON mapping, and the checks a
client applies to gateway frames (docs/protocol.md sections 2-4 and 7).

It depends only on the `msgpack` package (for the msgpack value encoding itself); it never uses the
busgate client library, so the suite grades a gateway against the spec, not against another codec.

Internal frame representation: a Python list `[op, field1, ...]` whose payload fields (PUB/MSG/REQ/RES)
are `bytes` and every other string is `str`. The *view* of a frame is its JSON mapping (section 4):
payloads become a str when they are valid UTF-8 and `{"base64": ...}` otherwise. Scenario files are
written in that mapping.
"""
from __future__ import annotations

import base64
import json
import struct
from typing import Any

import msgpack

HELLO, WELCOME, PUB, SUB, UNSUB, MSG, REQ, RES, OK, ERR, PING, PONG, GOAWAY, ACK, NAK, CREDIT, PROGRESS, TERM = \
    range(1, 19)
OP_NAMES = {1: "HELLO", 2: "WELCOME", 3: "PUB", 4: "SUB", 5: "UNSUB", 6: "MSG", 7: "REQ", 8: "RES", 9: "OK",
            10: "ERR", 11: "PING", 12: "PONG", 13: "GOAWAY", 14: "ACK", 15: "NAK", 16: "CREDIT", 17: "PROGRESS",
            18: "TERM"}
DURABLE_OPS = (ACK, NAK, CREDIT, PROGRESS, TERM)
OPS = {v: k for k, v in OP_NAMES.items()}

# (code, name, fatal) from docs/protocol.md section 17.
ERROR_TABLE = [
    (100, "MALFORMED_FRAME", True), (101, "UNKNOWN_OP", False), (102, "FRAME_TOO_LARGE", True),
    (103, "NOT_BUSGATE", True), (104, "HANDSHAKE_REQUIRED", True), (105, "UNSUPPORTED_VERSION", True),
    (106, "HANDSHAKE_TIMEOUT", True), (107, "UNEXPECTED_OP", False),
    (200, "AUTH_METHOD_UNSUPPORTED", True), (201, "AUTH_FAILED", True), (202, "AUTH_REVOKED", True),
    (300, "INVALID_SUBJECT", False), (301, "WILDCARD_NOT_ALLOWED", False), (302, "RESERVED_SUBJECT", False),
    (303, "RESERVED_HEADER", False), (304, "INVALID_HEADER", False), (305, "INVALID_QUEUE", False),
    (306, "PERMISSION_DENIED", False), (307, "SID_IN_USE", False), (308, "UNKNOWN_SID", False),
    (309, "INVALID_OPTION", False), (310, "UNKNOWN_DELIVERY", False), (311, "UNKNOWN_STREAM", False),
    (400, "PAYLOAD_TOO_LARGE", False), (401, "TOO_MANY_SUBSCRIPTIONS", False), (402, "RATE_LIMITED", False),
    (403, "TOO_MANY_REQUESTS", False), (404, "TOO_MANY_CONNECTIONS", True), (405, "SLOW_CONSUMER_WARNING", False),
    (406, "SLOW_CONSUMER", True), (407, "TOO_MANY_CONSUMERS", False), (500, "NO_RESPONDERS", False),
    (501, "REQUEST_TIMEOUT", False), (502, "BUS_UNAVAILABLE", False), (503, "DUPLICATE_REQUEST_ID", False),
    (504, "NOT_STORED", False), (600, "INTERNAL_ERROR", False),
    (601, "SHUTTING_DOWN", True), (602, "IDLE_TIMEOUT", True), (603, "CLOSED_BY_ADMIN", True),
    (604, "NOT_SUPPORTED", False),
]
CODES = {name: code for code, name, _ in ERROR_TABLE}
CODE_NAMES = {code: name for code, name, _ in ERROR_TABLE}
FATAL = {name: fatal for _, name, fatal in ERROR_TABLE}
GRAMMAR_CODES = {"INVALID_SUBJECT", "WILDCARD_NOT_ALLOWED", "RESERVED_SUBJECT", "INVALID_QUEUE", "INVALID_HEADER",
                 "RESERVED_HEADER"}

PRE_HANDSHAKE_MAX_FRAME = 65535
DEFAULT_MAX_FRAME = 1114112
PAYLOAD_INDEX = {PUB: 2, MSG: 3, REQ: 3, RES: 3}
UINT32_MAX = 4294967295


def code_of(name_or_code: str | int) -> int:
    return name_or_code if isinstance(name_or_code, int) else CODES[name_or_code]


def name_of(code: int) -> str:
    return CODE_NAMES.get(code, f"code {code}")


class DecodeError(Exception):
    """A gateway frame that a conforming client must reject."""


# ---------------------------------------------------------------------------------------------
# msgpack bodies

def encode_body(frame: list) -> bytes:
    """Canonical msgpack: smallest integer and length formats, bytes as bin, str as str, map entries
    in insertion order (the msgpack package does exactly this with use_bin_type=True)."""
    return msgpack.packb(frame, use_bin_type=True)


def encode_frame(frame: list) -> bytes:
    body = encode_body(frame)
    return struct.pack(">I", len(body)) + body


def _no_dup_pairs(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise DecodeError(f"duplicate map key {k!r}")
        d[k] = v
    return d


def _ext(code, data):
    raise DecodeError("msgpack ext value (never used by busgate)")


def decode_body(body: bytes) -> Any:
    """One msgpack value with nothing after it; UTF-8 str; no ext; no duplicate map keys."""
    if not body:
        raise DecodeError("zero-length body")
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=False, object_pairs_hook=_no_dup_pairs,
                               ext_hook=_ext, use_list=True)
    except DecodeError:
        raise
    except msgpack.ExtraData as e:
        raise DecodeError("bytes left over after the msgpack value") from e
    except UnicodeDecodeError as e:
        raise DecodeError("str that is not valid UTF-8") from e
    except Exception as e:  # noqa: BLE001 - every other unpack failure is malformed msgpack
        raise DecodeError(f"not one well-formed msgpack value: {e}") from e


# ---------------------------------------------------------------------------------------------
# Checks a client applies to frames from the gateway (section 3.4 steps 3-6, section 7)

def _is_uint(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_id(v) -> bool:
    return _is_uint(v) and v <= UINT32_MAX


def _is_headers(v) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str) for k, x in v.items())


def _json_any(v) -> bool:
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    if isinstance(v, list):
        return all(_json_any(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _json_any(x) for k, x in v.items())
    return False


# field spec: (name, check, optional)
_GATEWAY_FIELDS = {
    WELCOME: [("version", _is_uint, False), ("session_id", lambda v: isinstance(v, str), False),
              ("node_id", lambda v: isinstance(v, str), False), ("tenant", lambda v: isinstance(v, str), False),
              ("limits", lambda v: isinstance(v, dict) and _json_any(v), False)],
    MSG: [("sid", _is_id, False), ("subject", lambda v: isinstance(v, str), False),
          ("payload", lambda v: isinstance(v, bytes), False), ("headers", _is_headers, True),
          ("reply_to", lambda v: isinstance(v, str), True), ("delivery_id", _is_uint, True),
          ("attempt", _is_uint, True)],
    RES: [("req_id", _is_id, False), ("status", _is_uint, False), ("payload", lambda v: isinstance(v, bytes), False),
          ("headers", _is_headers, True)],
    OK: [("ref_op", _is_uint, False), ("ref_id", _is_uint, False)],
    ERR: [("code", _is_uint, False), ("message", lambda v: isinstance(v, str), False), ("ref_op", _is_uint, True),
          ("ref_id", _is_uint, True)],
    PING: [], PONG: [],
    GOAWAY: [("delay_ms", _is_uint, False), ("reason", lambda v: isinstance(v, str), False),
             ("servers", lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v), True)],
}
GATEWAY_OPS = set(_GATEWAY_FIELDS)
# Optional uint fields of gateway frames: 0 means absent (section 3.3).
OPTIONAL_UINTS = ("ref_op", "ref_id", "delivery_id", "attempt")


def check_gateway_frame(value: Any) -> list:
    """Validate a decoded body as a gateway frame. Returns the frame (a list); raises DecodeError
    for what section 3.4 makes MALFORMED_FRAME (or UNEXPECTED_OP for a client-only op)."""
    if not isinstance(value, list) or not value or not _is_uint(value[0]):
        raise DecodeError("body is not a non-empty array starting with a uint op")
    op = value[0]
    if op not in OP_NAMES:
        return value  # unknown op: a client skips it silently (checked by the caller)
    if op not in GATEWAY_OPS:
        raise DecodeError(f"op {OP_NAMES[op]} may not be sent by a gateway (UNEXPECTED_OP)")
    for i, (name, check, optional) in enumerate(_GATEWAY_FIELDS[op], start=1):
        if i >= len(value) or value[i] is None:
            if not optional:
                raise DecodeError(f"{OP_NAMES[op]} is missing its required field {name}")
            continue
        if not check(value[i]):
            raise DecodeError(f"{OP_NAMES[op]} field {name} has the wrong type: {value[i]!r:.80}")
    return value


def canonical_problems(frame: list, body: bytes) -> list[str]:
    """Ways in which a gateway frame departs from the canonical encoding (section 3.3)."""
    out = []
    if encode_body(frame) != body:
        out.append("not the smallest msgpack encoding")
    op = frame[0]
    if len(frame) > 1 and frame[-1] is None:
        out.append("trailing nil field")
    spec = _GATEWAY_FIELDS.get(op, [])
    for i, (name, _, optional) in enumerate(spec, start=1):
        if i < len(frame) and optional:
            v = frame[i]
            if name == "headers" and v == {}:
                out.append("empty headers map instead of an absent field")
            if name == "servers" and v == []:
                out.append("empty servers array instead of an absent field")
            if name in OPTIONAL_UINTS and v == 0:
                out.append(f"optional {name} written as 0 instead of absent")
    return out


# ---------------------------------------------------------------------------------------------
# JSON mapping (section 4)

def payload_view(b: bytes):
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(b).decode("ascii")}


def view(frame: list) -> list:
    """The JSON mapping of an internal frame (what scenario patterns are written against)."""
    out = []
    pidx = PAYLOAD_INDEX.get(frame[0]) if frame else None
    for i, v in enumerate(frame):
        if isinstance(v, bytes):
            out.append(payload_view(v) if i == pidx else {"$bin": v.hex()})
        else:
            out.append(_view_value(v))
    return out


def _view_value(v):
    if isinstance(v, bytes):
        return {"$bin": v.hex()}
    if isinstance(v, list):
        return [_view_value(x) for x in v]
    if isinstance(v, dict):
        return {k: _view_value(x) for k, x in v.items()}
    return v


def from_view(frame: list) -> list:
    """Internal frame from its JSON mapping: payload fields become bytes."""
    out = list(frame)
    pidx = PAYLOAD_INDEX.get(out[0]) if out and isinstance(out[0], int) else None
    if pidx is not None and pidx < len(out):
        p = out[pidx]
        if isinstance(p, str):
            out[pidx] = p.encode("utf-8")
        elif isinstance(p, dict) and set(p) == {"base64"}:
            out[pidx] = base64.b64decode(p["base64"], validate=True)
    return out


def to_json_text(frame: list) -> str:
    """Compact JSON text of an internal frame (busgate.v1.json)."""
    def conv(i, v):
        if isinstance(v, bytes):
            return payload_view(v)
        return v
    return json.dumps([conv(i, v) for i, v in enumerate(frame)], separators=(",", ":"), ensure_ascii=False)


class _Dup(dict):
    pass


def _json_pairs(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise DecodeError(f"JSON object with a repeated member {k!r}")
        d[k] = v
    return d


def _reject_const(c):
    raise DecodeError(f"JSON constant {c} is not allowed")


def decode_json_text(text: str) -> list:
    """A gateway JSON text message to an internal frame (payloads as bytes)."""
    try:
        value = json.loads(text, object_pairs_hook=_json_pairs, parse_constant=_reject_const)
    except DecodeError:
        raise
    except ValueError as e:
        raise DecodeError(f"not valid JSON: {e}") from e
    if not isinstance(value, list) or not value or not _is_uint(value[0]):
        raise DecodeError("JSON frame is not a non-empty array starting with a uint op")
    pidx = PAYLOAD_INDEX.get(value[0])
    if pidx is not None and pidx < len(value):
        p = value[pidx]
        if isinstance(p, str):
            value[pidx] = p.encode("utf-8")
        elif isinstance(p, dict) and set(p) == {"base64"} and isinstance(p["base64"], str):
            try:
                value[pidx] = base64.b64decode(p["base64"], validate=True)
            except ValueError as e:
                raise DecodeError("bad base64 payload") from e
        else:
            raise DecodeError("payload is neither a string nor a {\"base64\": ...} object")
    return value


def json_canonical_problems(frame: list, text: str) -> list[str]:
    out = []
    if to_json_text(frame) != text:
        out.append("not the canonical compact JSON text")
    if len(frame) > 1 and frame[-1] is None:
        out.append("trailing null field")
    return out


def normalize(frame: list) -> list:
    """The canonical form of a decoded gateway frame (section 3.3): fields after the last defined one
    dropped, absent optional values (nil, {} headers, [] servers, optional uint 0) as nil, trailing
    nils removed. Scenario patterns are matched against this form."""
    spec = _GATEWAY_FIELDS.get(frame[0]) if frame else None
    if spec is None:
        return list(frame)
    out = list(frame[:len(spec) + 1])
    for i, (name, _, optional) in enumerate(spec, start=1):
        if i < len(out) and optional:
            v = out[i]
            if (name == "headers" and v == {}) or (name == "servers" and v == []) or \
                    (name in OPTIONAL_UINTS and v == 0 and not isinstance(v, bool)):
                out[i] = None
    while len(out) > 1 and out[-1] is None:
        out.pop()
    return out
