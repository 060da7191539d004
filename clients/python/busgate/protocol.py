"""The busgate v1 wire protocol (docs/protocol.md): frame model, canonical msgpack encoder, strict
decoder, incremental stream parser for TCP framing, subject/queue/header grammar, and the JSON
mapping used by the ``busgate.v1.json`` WebSocket subprotocol.

Pure functions and data classes: no I/O, no asyncio. Errors are the typed errors of
:mod:`busgate.errors` and carry the protocol code (``MalformedFrame``, ``FrameTooLarge``,
``UnknownOp``, ``UnexpectedOp``, ``InvalidSubject``, ...).

    >>> body = encode(Pub("orders.created", b"hello"))
    >>> decode(body, CLIENT)
    Pub(subject='orders.created', payload=b'hello', headers=None, reply_to=None, ack=None, msg_id=None)
"""
from __future__ import annotations

import base64
import binascii
import json
import re
import struct
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Union

import msgpack

from . import errors as E

__all__ = [
    "CLIENT", "GATEWAY", "VERSION", "DEFAULT_MAX_FRAME", "PRE_HANDSHAKE_MAX_FRAME",
    "HELLO", "WELCOME", "PUB", "SUB", "UNSUB", "MSG", "REQ", "RES", "OK", "ERR", "PING", "PONG",
    "GOAWAY", "ACK", "NAK", "CREDIT", "PROGRESS", "TERM", "OP_NAMES",
    "Frame", "Hello", "Welcome", "Pub", "Sub", "Unsub", "Msg", "Req", "Res", "Ok", "Err", "Ping",
    "Pong", "Goaway", "Ack", "Nak", "Credit", "Progress", "Term",
    "encode", "encode_framed", "decode", "decode_framed", "StreamParser",
    "to_json", "from_json", "to_json_text", "from_json_text", "payload_to_json", "payload_from_json",
    "check_subject", "check_queue", "check_headers", "check_msg_id", "check_durable_name", "subject_matches",
    "encode_pub_framed", "encode_pub",
]

CLIENT = "client"
GATEWAY = "gateway"
VERSION = 1
DEFAULT_MAX_FRAME = 1114112
PRE_HANDSHAKE_MAX_FRAME = 65535

(HELLO, WELCOME, PUB, SUB, UNSUB, MSG, REQ, RES, OK, ERR, PING, PONG, GOAWAY, ACK, NAK, CREDIT, PROGRESS,
 TERM) = range(1, 19)
OP_NAMES = {1: "HELLO", 2: "WELCOME", 3: "PUB", 4: "SUB", 5: "UNSUB", 6: "MSG", 7: "REQ", 8: "RES",
            9: "OK", 10: "ERR", 11: "PING", 12: "PONG", 13: "GOAWAY", 14: "ACK", 15: "NAK", 16: "CREDIT",
            17: "PROGRESS", 18: "TERM"}

SUBJECT_MAX, QUEUE_MAX = 256, 64
HEADER_KEY_MAX, HEADER_VALUE_MAX, HEADERS_MAX = 64, 4096, 64
UINT32_MAX = 0xFFFFFFFF
UINT64_MAX = 0xFFFFFFFFFFFFFFFF
MSG_ID_MAX, DURABLE_MAX, TERM_REASON_MAX = 128, 64, 1024

Headers = dict[str, str]

# ------------------------------------------------------------------------------------------------
# Frame model. FIELDS: (attribute, type, optional, grammar); grammar applies to client frames only.
# Types: uint, id (uint32), str, bin (payload), map (str -> any), headers (str -> str),
# versions (non-empty array of uint), strs (array of str).


@dataclass(slots=True)
class Frame:
    OP: ClassVar[int] = 0
    SENDER: ClassVar[str] = ""  # CLIENT, GATEWAY or "both"
    FIELDS: ClassVar[tuple[tuple[str, str, bool, str | None], ...]] = ()

    @property
    def op(self) -> int:
        return self.OP

    @property
    def op_name(self) -> str:
        return OP_NAMES[self.OP]


@dataclass(slots=True)
class Hello(Frame):
    versions: list[int]
    auth: dict[str, Any]
    name: str | None = None
    opts: dict[str, Any] | None = None
    OP: ClassVar[int] = HELLO
    SENDER: ClassVar[str] = CLIENT
    FIELDS: ClassVar = (("versions", "versions", False, None), ("auth", "map", False, None),
                        ("name", "str", True, None), ("opts", "map", True, None))


@dataclass(slots=True)
class Welcome(Frame):
    version: int
    session_id: str
    node_id: str
    tenant: str
    limits: dict[str, Any]
    OP: ClassVar[int] = WELCOME
    SENDER: ClassVar[str] = GATEWAY
    FIELDS: ClassVar = (("version", "uint", False, None), ("session_id", "str", False, None),
                        ("node_id", "str", False, None), ("tenant", "str", False, None),
                        ("limits", "map", False, None))


@dataclass(slots=True)
class Pub(Frame):
    subject: str
    payload: bytes
    headers: Headers | None = None
    reply_to: str | None = None
    ack: int | None = None
    msg_id: str | None = None
    OP: ClassVar[int] = PUB
    SENDER: ClassVar[str] = CLIENT
    FIELDS: ClassVar = (("subject", "str", False, "pub"), ("payload", "bin", False, None),
                        ("headers", "headers", True, "headers"), ("reply_to", "str", True, "pub"),
                        ("ack", "id", True, None), ("msg_id", "str", True, None))


@dataclass(slots=True)
class Sub(Frame):
    sid: int
    subject: str
    queue: str | None = None
    opts: dict[str, Any] | None = None
    OP: ClassVar[int] = SUB
    SENDER: ClassVar[str] = CLIENT
    FIELDS: ClassVar = (("sid", "id", False, None), ("subject", "str", False, "sub"),
                        ("queue", "str", True, "queue"), ("opts", "map", True, None))


@dataclass(slots=True)
class Unsub(Frame):
    sid: int
    max_msgs: int | None = None
    OP: ClassVar[int] = UNSUB
    SENDER: ClassVar[str] = CLIENT
    FIELDS: ClassVar = (("sid", "id", False, None), ("max_msgs", "uint", True, None))


@dataclass(slots=True)
class Msg(Frame):
    sid: int
    subject: str
    payload: bytes
    headers: Headers | None = None
    reply_to: str | None = None
    delivery_id: int | None = None
    attempt: int | None = None
    OP: ClassVar[int] = MSG
    SENDER: ClassVar[str] = GATEWAY
    FIELDS: ClassVar = (("sid", "id", False, None), ("subject", "str", False, None),
                        ("payload", "bin", False, None), ("headers", "headers", True, None),
                        ("reply_to", "str", True, None), ("delivery_id", "uint", True, None),
                        ("attempt", "uint", True, None))


@dataclass(slots=True)
class Req(Frame):
    req_id: int
    subject: str
    payload: bytes
    headers: Headers | None = None
    timeout_ms: int | None = None
    OP: ClassVar[int] = REQ
    SENDER: ClassVar[str] = CLIENT
    FIELDS: ClassVar = (("req_id", "id", False, None), ("subject", "str", False, "pub"),
                        ("payload", "bin", False, None), ("headers", "headers", True, "headers"),
                        ("timeout_ms", "uint", True, None))


@dataclass(slots=True)
class Res(Frame):
    req_id: int
    status: int
    payload: bytes
    headers: Headers | None = None
    OP: ClassVar[int] = RES
    SENDER: ClassVar[str] = GATEWAY
    FIELDS: ClassVar = (("req_id", "id", False, None), ("status", "uint", False, None),
                        ("payload", "bin", False, None), ("headers", "headers", True, None))


@dataclass(slots=True)
class Ok(Frame):
    ref_op: int
    ref_id: int
    OP: ClassVar[int] = OK
    SENDER: ClassVar[str] = GATEWAY
    FIELDS: ClassVar = (("ref_op", "uint", False, None), ("ref_id", "uint", False, None))


@dataclass(slots=True)
class Err(Frame):
    code: int
    message: str
    ref_op: int | None = None
    ref_id: int | None = None
    OP: ClassVar[int] = ERR
    SENDER: ClassVar[str] = GATEWAY
    FIELDS: ClassVar = (("code", "uint", False, None), ("message", "str", False, None),
                        ("ref_op", "uint", True, None), ("ref_id", "uint", True, None))

    def error(self) -> E.BusgateError:
        """The typed error this ERR stands for."""
        return E.error_for(self.code, self.message, self.ref_op, self.ref_id)


@dataclass(slots=True)
class Ping(Frame):
    OP: ClassVar[int] = PING
    SENDER: ClassVar[str] = "both"


@dataclass(slots=True)
class Pong(Frame):
    OP: ClassVar[int] = PONG
    SENDER: ClassVar[str] = "both"


@dataclass(slots=True)
class Goaway(Frame):
    delay_ms: int
    reason: str
    servers: list[str] | None = None
    OP: ClassVar[int] = GOAWAY
    SENDER: ClassVar[str] = GATEWAY
    FIELDS: ClassVar = (("delay_ms", "uint", False, None), ("reason", "str", False, None),
                        ("servers", "strs", True, None))


@dataclass(slots=True)
class Ack(Frame):
    sid: int
    delivery_id: int
    OP: ClassVar[int] = ACK
    SENDER: ClassVar[str] = CLIENT
    FIELDS: ClassVar = (("sid", "id", False, None), ("delivery_id", "uint", False, None))


@dataclass(slots=True)
class Nak(Frame):
    sid: int
    delivery_id: int
    delay_ms: int | None = None
    OP: ClassVar[int] = NAK
    SENDER: ClassVar[str] = CLIENT
    FIELDS: ClassVar = (("sid", "id", False, None), ("delivery_id", "uint", False, None),
                        ("delay_ms", "uint", True, None))


@dataclass(slots=True)
class Credit(Frame):
    sid: int
    credits: int
    OP: ClassVar[int] = CREDIT
    SENDER: ClassVar[str] = CLIENT
    FIELDS: ClassVar = (("sid", "id", False, None), ("credits", "uint", False, None))


@dataclass(slots=True)
class Progress(Frame):
    sid: int
    delivery_id: int
    OP: ClassVar[int] = PROGRESS
    SENDER: ClassVar[str] = CLIENT
    FIELDS: ClassVar = (("sid", "id", False, None), ("delivery_id", "uint", False, None))


@dataclass(slots=True)
class Term(Frame):
    sid: int
    delivery_id: int
    reason: str | None = None
    OP: ClassVar[int] = TERM
    SENDER: ClassVar[str] = CLIENT
    FIELDS: ClassVar = (("sid", "id", False, None), ("delivery_id", "uint", False, None),
                        ("reason", "str", True, None))


AnyFrame = Union[Hello, Welcome, Pub, Sub, Unsub, Msg, Req, Res, Ok, Err, Ping, Pong, Goaway, Ack, Nak, Credit,
                 Progress, Term]
CLASSES: dict[int, type[Frame]] = {c.OP: c for c in (Hello, Welcome, Pub, Sub, Unsub, Msg, Req, Res, Ok, Err,
                                                     Ping, Pong, Goaway, Ack, Nak, Credit, Progress, Term)}

# ------------------------------------------------------------------------------------------------
# Grammar (sections 8, 10, 11). Raised as the typed errors; used by the decoder for client frames
# and by the client to report errors before sending.

_HEADER_KEY = re.compile(r"[A-Za-z0-9_.\-]{1,64}\Z")
_BAD_TOKEN_BYTES = re.compile(rb"[\x00-\x20\x7f]")
_BAD_QUEUE_BYTES = re.compile(rb"[\x00-\x20\x7f.*>]")


def check_subject(subject: str, wildcards: bool = False) -> None:
    """Raise InvalidSubject, WildcardNotAllowed or ReservedSubject if ``subject`` breaks section 8.
    ``wildcards``: whether ``*`` and ``>`` are allowed (SUB subjects only)."""
    if type(subject) is not str:
        raise E.InvalidSubject("a subject must be a str")
    b = subject.encode("utf-8", "surrogatepass")
    if not 1 <= len(b) <= SUBJECT_MAX:
        raise E.InvalidSubject(f"subject must be 1 to {SUBJECT_MAX} bytes, got {len(b)}")
    if _BAD_TOKEN_BYTES.search(b):
        raise E.InvalidSubject(f"subject {subject!r} contains a space or a control character")
    tokens = b.split(b".")
    wild = False
    last = len(tokens) - 1
    for i, tok in enumerate(tokens):
        if not tok:
            raise E.InvalidSubject(f"subject {subject!r} has an empty token")
        if b"*" in tok or b">" in tok:
            if tok not in (b"*", b">") or (tok == b">" and i != last):
                raise E.InvalidSubject(f"subject {subject!r}: '*' and '>' must be whole tokens, '>' only last")
            wild = True
    if wild and not wildcards:
        raise E.WildcardNotAllowed(f"subject {subject!r}: wildcards are allowed only when subscribing")
    if tokens[0].startswith(b"$"):
        raise E.ReservedSubject(f"subject {subject!r}: '$' subjects are reserved")


def check_queue(queue: str) -> None:
    """Raise InvalidQueue if ``queue`` breaks section 10."""
    if type(queue) is not str:
        raise E.InvalidQueue("a queue group must be a str")
    b = queue.encode("utf-8", "surrogatepass")
    if not 1 <= len(b) <= QUEUE_MAX or _BAD_QUEUE_BYTES.search(b):
        raise E.InvalidQueue(f"queue group {queue!r}: 1 to {QUEUE_MAX} bytes, no '.', '*', '>', space or control")


def check_headers(headers: Headers) -> None:
    """Raise InvalidHeader or ReservedHeader if ``headers`` breaks section 11."""
    if len(headers) > HEADERS_MAX:
        raise E.InvalidHeader(f"{len(headers)} headers; at most {HEADERS_MAX}")
    for k, v in headers.items():
        if type(k) is not str or not _HEADER_KEY.match(k):
            raise E.InvalidHeader(f"header key {k!r}: 1 to 64 ASCII letters, digits, '-', '_', '.'")
        if type(v) is not str:
            raise E.InvalidHeader(f"header {k!r}: the value must be a str")
        if "\r" in v or "\n" in v or len(v.encode("utf-8", "surrogatepass")) > HEADER_VALUE_MAX:
            raise E.InvalidHeader(f"header {k!r}: at most {HEADER_VALUE_MAX} bytes, no CR or LF")
        if k[:8].lower() == "busgate-":
            raise E.ReservedHeader(f"header {k!r}: 'busgate-' headers are set by gateways only")


_MSG_ID = re.compile(r"[\x21-\x7e]{1,128}\Z")
_DURABLE = re.compile(r"[A-Za-z0-9_\-]{1,64}\Z")


def check_msg_id(msg_id: str) -> None:
    """Raise InvalidOption if ``msg_id`` is not 1 to 128 bytes of printable ASCII without spaces
    (section 16.5). The gateway answers the same error; the decoder does not check it."""
    if type(msg_id) is not str or not _MSG_ID.match(msg_id):
        raise E.InvalidOption(f"msg_id {msg_id!r}: 1 to {MSG_ID_MAX} printable ASCII characters, no spaces")


def check_durable_name(name: str) -> None:
    """Raise InvalidOption if ``name`` is not a consumer name: 1 to 64 ASCII letters, digits, '-' and
    '_' (section 16.1)."""
    if type(name) is not str or not _DURABLE.match(name):
        raise E.InvalidOption(f"durable {name!r}: 1 to {DURABLE_MAX} ASCII letters, digits, '-' and '_'")


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether a subscription ``pattern`` (with ``*``/``>``) matches a published ``subject``."""
    p = pattern.split(".")
    s = subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


# ------------------------------------------------------------------------------------------------
# Decoder (section 3.4).


def _malformed(detail: str) -> E.BusgateError:
    return E.MalformedFrame(detail)


def _pairs(pairs: list) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise _malformed("a map has a duplicate key")
    for k in d:
        if type(k) is not str:
            raise _malformed("map keys must be str")
    return d


def _ext(code: int, data: bytes) -> Any:
    raise _malformed("msgpack ext values are never used")


def _is_uint(v: Any) -> bool:
    return type(v) is int and v >= 0


def _check_any(v: Any) -> None:
    t = type(v)
    if v is None or t is bool or t is int or t is float or t is str or t is _NegZero:
        return
    if t is list:
        for x in v:
            _check_any(x)
        return
    if t is dict:
        for x in v.values():
            _check_any(x)
        return
    raise _malformed(f"a value of type {t.__name__} where only nil, bool, number, str, array or map may be")


def _reject_ext_anywhere(v: Any) -> None:
    t = type(v)
    if t is list:
        for x in v:
            _reject_ext_anywhere(x)
    elif t is dict:
        for x in v.values():
            _reject_ext_anywhere(x)
    elif isinstance(v, msgpack.Timestamp):
        raise _malformed("msgpack ext values are never used")


def _typed(v: Any, ftype: str, name: str) -> Any:
    if ftype == "uint":
        if _is_uint(v):
            return v
    elif ftype == "id":
        if _is_uint(v) and v <= UINT32_MAX:
            return v
    elif ftype == "str":
        if type(v) is str:
            return v
    elif ftype == "bin":
        if type(v) is bytes:
            return v
    elif ftype == "map":
        if type(v) is dict:
            _check_any(v)
            return v
    elif ftype == "headers":
        if type(v) is dict:
            for x in v.values():
                if type(x) is not str:
                    raise _malformed(f"{name}: header values must be str")
            return v or None  # {} means no headers
    elif ftype == "versions":
        if type(v) is list and v and all(_is_uint(x) for x in v):
            return v
    elif ftype == "strs":
        if type(v) is list and all(type(x) is str for x in v):
            return v or None  # [] means none given
    raise _malformed(f"{name}: expected {ftype}, got {type(v).__name__}")


def _build(items: list, sender: str) -> Frame:
    """Checks 3-7 of section 3.4 on an unpacked body; returns the frame."""
    if type(items) is not list or not items or not _is_uint(items[0]):
        raise _malformed("the body must be a non-empty array whose first element is a uint op")
    op = items[0]
    cls = CLASSES.get(op)
    if cls is None:
        raise E.UnknownOp(f"op {op} is not defined in v1", ref_op=op)
    if cls.SENDER != "both" and cls.SENDER != sender:
        raise E.UnexpectedOp(f"{OP_NAMES[op]} may not be sent by the {sender}", ref_op=op)
    fields = cls.FIELDS
    n = len(fields)
    if len(items) > n + 1:
        _reject_ext_anywhere(items[n + 1:])
    values = []
    for i, (name, ftype, optional, _) in enumerate(fields, 1):
        v = items[i] if i < len(items) else None
        if v is None:
            if not optional:
                raise _malformed(f"{OP_NAMES[op]}: {name} is required")
        else:
            v = _typed(v, ftype, name)
            if optional and v == 0 and (ftype == "uint" or ftype == "id"):
                v = None  # an optional uint of 0 means absent
        values.append(v)
    frame = cls(*values)
    if sender == CLIENT:
        for (name, _, _, grammar), v in zip(fields, values):
            if grammar is None or v is None:
                continue
            if grammar == "headers":
                check_headers(v)
            elif grammar == "queue":
                check_queue(v)
            else:
                check_subject(v, wildcards=grammar == "sub")
    return frame


_unpackb = msgpack.unpackb
_MSG_ARRAY_HEADERS = (0x94, 0x95, 0x96, 0x97, 0x98)  # fixarray of 4 to 8 items
_HEADERS_SEEN: set[tuple] = set()  # header maps (as tuples of pairs) already found valid
_HEADERS_SEEN_MAX = 1024


def _msg_fields(body: bytes) -> tuple | None:
    """Fast path for the hot frame: the fields ``(sid, subject, payload, headers, reply_to,
    delivery_id, attempt)`` of a gateway MSG body of 4 to 8 items that passes every check of
    section 3.4, or None for anything else: the caller then uses the generic path (:func:`decode`),
    which decides and raises.

    Accepts a subset of what the generic path accepts, with the same result. The body is unpacked
    by msgpack in C with maps as tuples of (key, value) pairs; the headers map is valid when it
    equals one already validated (only a tuple of exactly the same str pairs can compare equal to
    one), else it is checked here like ``_pairs`` and ``_typed`` would: str keys, no duplicate key,
    str values. Ext values, non-str keys, trailing bytes and invalid UTF-8 fail the type checks or
    the unpacker, and go to the generic path. ``delivery_id`` and ``attempt`` (durable deliveries)
    are uints; 0 and nil mean absent."""
    if len(body) < 5 or body[1] != MSG or body[0] not in _MSG_ARRAY_HEADERS:
        return None
    try:
        items = _unpackb(body, object_pairs_hook=tuple)
    except Exception:
        return None
    sid = items[1]
    subject = items[2]
    payload = items[3]
    n = len(items)
    reply_to = items[5] if n > 5 else None
    if type(sid) is not int or not 0 <= sid <= UINT32_MAX or type(subject) is not str \
            or type(payload) is not bytes or (reply_to is not None and type(reply_to) is not str):
        return None
    delivery_id = attempt = None
    if n > 6:
        delivery_id = items[6]
        if delivery_id is not None:
            if type(delivery_id) is not int or delivery_id < 0:
                return None
            if delivery_id == 0:
                delivery_id = None
        if n > 7:
            attempt = items[7]
            if attempt is not None:
                if type(attempt) is not int or attempt < 0:
                    return None
                if attempt == 0:
                    attempt = None
    hp = items[4] if n > 4 else None
    if hp is None or hp == ():  # absent, nil or {}: no headers
        return sid, subject, payload, None, reply_to, delivery_id, attempt
    if type(hp) is not tuple:
        return None
    headers = dict(hp)
    try:
        seen = hp in _HEADERS_SEEN
    except TypeError:  # an unhashable value (array): not a valid header map
        return None
    if not seen:
        if len(headers) != len(hp):
            return None
        for k, v in hp:
            if type(k) is not str or type(v) is not str:
                return None
        if len(body) - len(payload) <= 512:  # remember small maps only: at most about 1 MiB in all
            if len(_HEADERS_SEEN) >= _HEADERS_SEEN_MAX:
                _HEADERS_SEEN.clear()
            _HEADERS_SEEN.add(hp)
    return sid, subject, payload, headers, reply_to, delivery_id, attempt


def decode(body: bytes, sender: str = GATEWAY) -> Frame:
    """Decode one msgpack body (no length prefix) sent by ``sender`` (CLIENT or GATEWAY).
    Raises the typed error of the first failed check of section 3.4."""
    if not body:
        raise _malformed("empty frame")
    if sender == GATEWAY:
        fields = _msg_fields(body)
        if fields is not None:
            return Msg(*fields)
    return _decode_generic(body, sender)


def _decode_generic(body: bytes, sender: str) -> Frame:
    """:func:`decode` without the MSG fast path (for callers that tried :func:`_msg_fields`)."""
    if not body:
        raise _malformed("empty frame")
    try:
        items = msgpack.unpackb(body, raw=False, object_pairs_hook=_pairs, ext_hook=_ext,
                                strict_map_key=False, use_list=True)
    except E.BusgateError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise _malformed(f"the body is not one well-formed msgpack value: {e}") from None
    if sender == GATEWAY and type(items) is list and items and items[0] == MSG:
        # Non-canonical MSG bodies; anything unusual goes through the generic checks of _build.
        n = len(items)
        if 4 <= n <= 6:
            sid, subject, payload = items[1], items[2], items[3]
            headers = items[4] if n > 4 else None
            reply_to = items[5] if n > 5 else None
            if (type(sid) is int and 0 <= sid <= UINT32_MAX and type(subject) is str and type(payload) is bytes
                    and (reply_to is None or type(reply_to) is str)):
                if headers is None:
                    return Msg(sid, subject, payload, None, reply_to)
                if type(headers) is dict:
                    for v in headers.values():
                        if type(v) is not str:
                            break
                    else:
                        return Msg(sid, subject, payload, headers or None, reply_to)
    return _build(items, sender)


def decode_framed(data: bytes, sender: str = GATEWAY, max_frame: int = DEFAULT_MAX_FRAME) -> Frame:
    """Decode exactly one full TCP frame (length prefix and body)."""
    p = StreamParser(max_frame)
    p.feed(data)
    body = p.next_body()
    if body is None or p.buffered:
        raise _malformed("the data is not exactly one frame")
    return decode(body, sender)


# ------------------------------------------------------------------------------------------------
# Encoder (section 3.3, canonical).

_pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack
_LEN = struct.Struct(">I").pack


def _items(frame: Frame) -> list:
    items: list = [frame.OP]
    for name, ftype, optional, _ in frame.FIELDS:
        v = getattr(frame, name)
        if optional:
            if (ftype == "uint" or ftype == "id") and v == 0:
                v = None
            elif (ftype == "headers" or ftype == "strs") and not v:
                v = None
        if ftype == "bin" and v is not None and type(v) is not bytes:
            v = bytes(v)
        items.append(v)
    while len(items) > 1 and items[-1] is None:
        items.pop()
    return items


def encode(frame: Frame) -> bytes:
    """The canonical msgpack body of ``frame`` (no length prefix)."""
    return _pack(_items(frame))


def encode_framed(frame: Frame) -> bytes:
    """The canonical TCP frame: 4-byte big-endian length, then the body."""
    body = _pack(_items(frame))
    return _LEN(len(body)) + body


def encode_pub(subject: str, payload: bytes, headers: Headers | None = None, reply_to: str | None = None,
               ack: int | None = None, msg_id: str | None = None) -> bytes:
    """Fast path for the canonical PUB body."""
    if msg_id:
        return _pack([PUB, subject, payload, headers or None, reply_to, ack or None, msg_id])
    if ack:
        return _pack([PUB, subject, payload, headers or None, reply_to, ack])
    if reply_to:
        return _pack([PUB, subject, payload, headers or None, reply_to])
    if headers:
        return _pack([PUB, subject, payload, headers])
    return _pack([PUB, subject, payload])


def encode_pub_framed(subject: str, payload: bytes, headers: Headers | None = None, reply_to: str | None = None,
                      ack: int | None = None, msg_id: str | None = None) -> bytes:
    body = encode_pub(subject, payload, headers, reply_to, ack, msg_id)
    return _LEN(len(body)) + body


# ------------------------------------------------------------------------------------------------
# TCP stream parser (section 2.1).


class StreamParser:
    """Splits a byte stream into frame bodies. Checks the length prefix against ``max_frame`` as
    soon as the 4 length bytes are there, before buffering the body. Partial frames wait for more
    bytes; they are never an error.

        p = StreamParser(max_frame=65535)
        p.feed(chunk)
        while (body := p.next_body()) is not None:
            frame = decode(body, GATEWAY)
    """

    __slots__ = ("max_frame", "_buf", "_pos")

    def __init__(self, max_frame: int = PRE_HANDSHAKE_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes) -> None:
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as a body."""
        return len(self._buf) - self._pos

    def next_body(self) -> bytes | None:
        """The next complete body, or None if more bytes are needed."""
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail < 4:
            return None
        n = int.from_bytes(buf[pos:pos + 4], "big")
        if n == 0:
            raise _malformed("zero-length frame")
        if n > self.max_frame:
            raise E.FrameTooLarge(f"length prefix {n} is above the maximum frame size {self.max_frame}")
        if avail < 4 + n:
            return None
        body = bytes(buf[pos + 4:pos + 4 + n])
        self._consume(4 + n)
        return body

    def _unread(self, limit: int) -> bytes:
        """A copy of up to ``limit`` bytes not yet returned, more if the first frame is longer (for a
        reader that walks the frames itself, then calls :meth:`_consume` with how many it used)."""
        buf = self._buf
        pos = self._pos
        if len(buf) - pos >= 4:
            first = 4 + int.from_bytes(buf[pos:pos + 4], "big")
            if first > limit:
                limit = first
        with memoryview(buf) as mv:
            return bytes(mv[pos:pos + limit])

    def _consume(self, n: int) -> None:
        """Mark ``n`` more bytes as returned (whole frames, walked over from :meth:`_unread`)."""
        if not n:
            return
        buf = self._buf
        end = self._pos + n
        if end >= len(buf):
            buf.clear()
            self._pos = 0
        elif end > 262144:
            del buf[:end]
            self._pos = 0
        else:
            self._pos = end

    def __iter__(self) -> Iterator[bytes]:
        while (body := self.next_body()) is not None:
            yield body

    def frames(self, sender: str = GATEWAY) -> Iterator[Frame]:
        for body in self:
            yield decode(body, sender)


# ------------------------------------------------------------------------------------------------
# JSON mapping (section 4).


def payload_to_json(b: bytes) -> str | dict[str, str]:
    """A payload as JSON: the str when the bytes are UTF-8, else ``{"base64": ...}``."""
    try:
        return bytes(b).decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(b).decode("ascii")}


_B64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?\Z")


def payload_from_json(v: Any) -> bytes:
    if type(v) is str:
        return v.encode("utf-8")
    if type(v) is dict and len(v) == 1 and "base64" in v and type(v["base64"]) is str and _B64.match(v["base64"]):
        try:
            return base64.b64decode(v["base64"], validate=True)
        except (binascii.Error, ValueError):
            pass
    raise _malformed('a payload must be a str or {"base64": "<standard base64 with padding>"}')


def to_json(frame: Frame) -> list:
    """The canonical JSON mapping of ``frame`` as a Python list (section 4; the ``decoded`` member
    of a conformance vector)."""
    items = _items(frame)
    for i, (_, ftype, _, _) in enumerate(frame.FIELDS, 1):
        if ftype == "bin" and i < len(items) and items[i] is not None:
            items[i] = payload_to_json(items[i])
    return items


def from_json(value: Any, sender: str = GATEWAY) -> Frame:
    """A frame from its JSON mapping (a parsed JSON array), checked like a msgpack body."""
    if type(value) is not list or not value or not _is_uint(value[0]):
        raise _malformed("the JSON text must be an array whose first element is a uint op")
    cls = CLASSES.get(value[0])
    if cls is not None:
        value = list(value)
        for i, (_, ftype, _, _) in enumerate(cls.FIELDS, 1):
            if ftype == "bin" and i < len(value) and value[i] is not None:
                value[i] = payload_from_json(value[i])
    return _build(value, sender)


def to_json_text(frame: Frame) -> str:
    """Compact JSON text, members in encoding order, non-ASCII as UTF-8 (what a gateway sends)."""
    return json.dumps(to_json(frame), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class _NegZero(int):
    """'-0' where a uint is expected is MALFORMED_FRAME; this subclass fails the uint type check."""


def _parse_int(s: str) -> int:
    return _NegZero(0) if s == "-0" else int(s)


def _parse_constant(s: str) -> Any:
    raise _malformed(f"{s} is not JSON")


def _json_pairs(pairs: list) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise _malformed("a JSON object has a repeated member name")
    return d


def _check_utf8(v: Any) -> None:
    t = type(v)
    if t is str:
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise _malformed("a string is not valid UTF-8 (lone surrogate)") from None
    elif t is list:
        for x in v:
            _check_utf8(x)
    elif t is dict:
        for k, x in v.items():
            _check_utf8(k)
            _check_utf8(x)


def from_json_text(text: str | bytes, sender: str = GATEWAY, max_frame: int | None = None) -> Frame:
    """Parse one ``busgate.v1.json`` message strictly (section 4) and check it like a msgpack body."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise _malformed("the text message is not UTF-8") from None
    if not text:
        raise _malformed("empty message")
    if max_frame is not None and len(text.encode("utf-8", "surrogatepass")) > max_frame:
        raise E.FrameTooLarge(f"message above the maximum frame size {max_frame}")
    try:
        value = json.loads(text, object_pairs_hook=_json_pairs, parse_int=_parse_int,
                           parse_constant=_parse_constant)
    except E.BusgateError:
        raise
    except (ValueError, RecursionError) as e:
        raise _malformed(f"not JSON: {e}") from None
    _check_utf8(value)
    return from_json(value, sender)
