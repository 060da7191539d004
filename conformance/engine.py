"""Scenario execution: connections with a frame queue, the pattern language of scenario files, the
step interpreter, and grading (OK, NON-STRICT, UNIMPLEMENTED, FAILED)."""
from __future__ import annotations

import json
import re
import secrets
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from . import codec
from .codec import ERR, MSG, OK, PING, PONG, RES, WELCOME
from .transport import OP_BIN, OP_TEXT, Closed, TcpTransport, WsRefused, WsTransport, parse_hostport

OK_, NON_STRICT, UNIMPLEMENTED, FAILED = "OK", "NON-STRICT", "UNIMPLEMENTED", "FAILED"
GRADES = [OK_, NON_STRICT, UNIMPLEMENTED, FAILED]

# WebSocket close codes after a fatal ERR (docs/protocol.md section 2.4).
WS_CLOSE_FOR = {"MALFORMED_FRAME": 1002, "HANDSHAKE_REQUIRED": 1002, "UNSUPPORTED_VERSION": 1002,
                "FRAME_TOO_LARGE": 1009, "SHUTTING_DOWN": 1001}
SUBPROTOCOL = {"ws": "busgate.v1", "wsjson": "busgate.v1.json"}


class Fail(Exception):
    pass


class Unimplemented(Exception):
    pass


class Options:
    """What the runner was told on its command line."""

    def __init__(self, url: str, ws_url: str | None, profile: dict, allow_drain: str | None = None,
                 timeout_scale: float = 1.0):
        self.url = url
        self.host, self.port = parse_hostport(url, 7422)
        self.ws_url = ws_url
        self.profile = profile
        self.allow_drain = allow_drain
        self.scale = timeout_scale
        self.ws_probe: str | None = None  # cached reason the WS endpoint is absent, or None
        # Durable consumption (section 16) is normative: a gateway answering NOT_SUPPORTED to a
        # section-16 frame fails, unless the profile declares the feature off ("features":
        # {"durable": false}); then such answers, and the durable cases, grade UNIMPLEMENTED.
        self.durable = profile.get("features", {}).get("durable", True) is not False


@dataclass
class Frame:
    fields: list
    view: list
    raw: bytes | str
    problems: list = field(default_factory=list)

    @property
    def op(self) -> int:
        return self.fields[0]

    def __repr__(self):
        # Long strings are shortened one by one, so every field (a trailing reply_to, delivery_id,
        # attempt) stays visible in a failure message.
        def cut(v):
            if isinstance(v, str) and len(v) > 80:
                return v[:60] + f"...({len(v)} chars)"
            if isinstance(v, list):
                return [cut(x) for x in v]
            if isinstance(v, dict):
                return {cut(k): cut(x) for k, x in v.items()}
            return v
        return json.dumps(cut(self.view), ensure_ascii=False)[:600]


def short(v) -> str:
    s = json.dumps(v, ensure_ascii=False, default=str)
    return s if len(s) <= 200 else s[:200] + "..."


# ------------------------------------------------------------------------------------------------
# Patterns

def match(p: Any, v: Any, vars_: dict, caps: dict) -> bool:
    if isinstance(p, str) and p == "$any":
        return True
    if isinstance(p, dict) and len(p) == 1:
        (k, a), = p.items()
        if k.startswith("$"):
            if k == "$capture":
                caps[a] = v
                return True
            if k == "$var":
                return _eq(vars_.get(a), v)
            if k == "$regex":
                return isinstance(v, str) and re.fullmatch(a, v, re.S) is not None
            if k == "$type":
                return _type_ok(a, v)
            if k == "$has":
                return isinstance(v, dict) and all(key in v and match(sub, v[key], vars_, caps)
                                                   for key, sub in a.items())
            if k == "$not":
                return not match(a, v, vars_, {})
            if k == "$oneof":
                return any(match(x, v, vars_, dict(caps)) for x in a)
            if k == "$all":
                return all(match(x, v, vars_, caps) for x in a)
            if k == "$range":
                return _num(v) and a[0] <= v <= a[1]
            if k == "$code":
                return _eq(codec.code_of(a), v)
            if k == "$repeat":
                return v == a[0] * a[1]
            if k == "$token":
                return False
    if isinstance(p, list):
        if not isinstance(v, list):
            return False
        if p and p[-1] == "$...":
            head = p[:-1]
            return len(v) >= len(head) and all(match(x, y, vars_, caps) for x, y in zip(head, v))
        return len(p) == len(v) and all(match(x, y, vars_, caps) for x, y in zip(p, v))
    if isinstance(p, dict):
        return isinstance(v, dict) and set(p) == set(v) and all(match(p[k], v[k], vars_, caps) for k in p)
    return _eq(p, v)


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _eq(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b and type(a) is type(b) or (_num(a) and _num(b) and a == b)


def _type_ok(t: str, v) -> bool:
    return {
        "uint": lambda: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
        "str": lambda: isinstance(v, str),
        "map": lambda: isinstance(v, dict),
        "array": lambda: isinstance(v, list),
        "nil": lambda: v is None,
        "bool": lambda: isinstance(v, bool),
    }[t]()


# ------------------------------------------------------------------------------------------------
# Connections

class Conn:
    """One client connection as the suite sees it: a transport plus a queue of received frames that
    no step has consumed yet. PINGs from the gateway are answered with PONG and skipped unless
    auto_pong is off."""

    def __init__(self, ctx: "Context", name: str, kind: str, tr):
        self.ctx, self.name, self.kind, self.tr = ctx, name, kind, tr
        self.queue: deque[Frame] = deque()
        self.max_frame = codec.PRE_HANDSHAKE_MAX_FRAME
        self.welcome: Frame | None = None
        self.closed: Closed | None = None
        self.auto_pong = True
        self.pings = 0

    # -- sending
    def send(self, frame: list):
        if self.kind == "tcp":
            self._send_bytes(codec.encode_frame(frame))
        elif self.kind == "ws":
            self._send_ws(OP_BIN, codec.encode_body(frame))
        else:
            self._send_ws(OP_TEXT, codec.to_json_text(frame).encode("utf-8"))

    def send_raw(self, data: bytes):
        """TCP: bytes on the stream. WebSocket: one message holding the bytes, of the subprotocol's type."""
        if self.kind == "tcp":
            self._send_bytes(data)
        else:
            self._send_ws(OP_BIN if self.kind == "ws" else OP_TEXT, data)

    def send_ws(self, opcode: int, data: bytes, fragments: int = 1):
        self._send_ws(opcode, data, fragments)

    def _send_bytes(self, data: bytes):
        try:
            self.tr.send_bytes(data)
        except Closed as e:
            self.closed = self.closed or e

    def _send_ws(self, opcode, data, fragments=1):
        try:
            self.tr.send_message(opcode, data, fragments)
        except Closed as e:
            self.closed = self.closed or e

    # -- receiving
    def _read(self, timeout: float) -> Frame:
        if self.closed:
            raise self.closed
        try:
            if self.kind == "tcp":
                raw = self.tr.recv_message(timeout, self.max_frame)
            else:
                opcode, raw = self.tr.recv_message(timeout)
                if len(raw) > self.max_frame:
                    raise Fail(f"{self.name}: gateway message of {len(raw)} bytes is above the maximum "
                               f"{self.max_frame}")
                want = OP_BIN if self.kind == "ws" else OP_TEXT
                if opcode != want:
                    raise Fail(f"{self.name}: gateway sent a {'text' if opcode == OP_TEXT else 'binary'} message "
                               f"under {SUBPROTOCOL[self.kind]}")
        except Closed as e:
            self.closed = e
            raise
        except ValueError as e:
            raise Fail(f"{self.name}: {e}") from e
        try:
            if self.kind == "wsjson":
                text = raw.decode("utf-8")
                fields = codec.check_gateway_frame(codec.decode_json_text(text))
                problems = codec.json_canonical_problems(fields, text)
                rawv = text
            else:
                fields = codec.check_gateway_frame(codec.decode_body(raw))
                problems = codec.canonical_problems(fields, raw)
                rawv = raw
        except (codec.DecodeError, UnicodeDecodeError) as e:
            raise Fail(f"{self.name}: the gateway sent a frame a client must reject ({e}): {raw[:80]!r}") from e
        f = Frame(fields, codec.view(codec.normalize(fields)), rawv, problems)
        for p in problems:
            self.ctx.non_strict(f"gateway frame not canonical ({p}): {f!r}")
        if f.op not in codec.OP_NAMES:
            self.ctx.non_strict(f"gateway sent op {f.op}, which this client did not ask for (skipped)")
            return self._read(timeout)
        if f.op == WELCOME and isinstance(f.fields[5], dict):
            mf = f.fields[5].get("max_frame")
            if isinstance(mf, int):
                self.max_frame = mf
        return f

    def next(self, timeout: float) -> Frame:
        """The next unconsumed frame other than a PING (which is answered)."""
        if self.queue:
            return self.queue.popleft()
        deadline = time.monotonic() + timeout
        while True:
            f = self._read(max(0.0, deadline - time.monotonic()))
            if f.op == PING and self.auto_pong:
                self.pings += 1
                self.send([PONG])
                continue
            return f

    def flush(self, timeout: float = 5.0):
        """PING/PONG barrier; frames received before the PONG stay queued for later steps."""
        self.send([PING])
        deadline = time.monotonic() + timeout
        got = []
        try:
            while True:
                f = self._read(max(0.0, deadline - time.monotonic()))
                if f.op == PONG:
                    break
                if f.op == PING and self.auto_pong:
                    self.pings += 1
                    self.send([PONG])
                    continue
                got.append(f)
        finally:
            self.queue.extend(got)

    def collect(self, quiet: float = 0.3, op: int | None = None) -> list[Frame]:
        """Every frame until the connection is quiet for `quiet` s (of `op` if given; others stay queued)."""
        out, keep = [], deque()
        for f in self.queue:
            (out if op is None or f.op == op else keep).append(f)
        self.queue = keep
        while True:
            try:
                f = self._read(quiet)
            except TimeoutError:
                return out
            if f.op == PING and self.auto_pong:
                self.send([PONG])
                continue
            if op is None or f.op == op:
                out.append(f)
            else:
                self.queue.append(f)

    def close(self):
        if self.kind != "tcp" and not self.closed:
            try:
                self.tr.send_close(1000)
            except Exception:  # noqa: BLE001
                pass
        self.tr.close()


# ------------------------------------------------------------------------------------------------
# The per-case context

class Context:
    def __init__(self, opts: Options, case_id: str):
        self.opts = opts
        self.case_id = case_id
        self.conns: dict[str, Conn] = {}
        self.vars: dict[str, Any] = {}
        self.notes: list[str] = []
        self.log: list[str] = []
        self.nonce = secrets.token_hex(4)

    # -- grading
    def non_strict(self, why: str):
        if why not in self.notes:
            self.notes.append(why)

    def fail(self, why: str):
        raise Fail(why)

    def unimplemented(self, why: str):
        raise Unimplemented(why)

    def require_durable(self):
        """A case that needs durable consumption (section 16): UNIMPLEMENTED when the profile
        declares the feature off."""
        if not self.opts.durable:
            raise Unimplemented("the profile declares durable consumption off (features.durable false)")

    def not_supported(self, c: "Conn", f: "Frame", expected: str):
        """The gateway answered NOT_SUPPORTED where something else was expected. Section 16 is
        normative, so that fails, unless the profile declares durable consumption off."""
        if not self.opts.durable:
            raise Unimplemented(f"{c.name}: gateway answered NOT_SUPPORTED (durable consumption declared off in "
                                f"the profile): {f!r}")
        raise Fail(f"{c.name}: expected {expected}, got NOT_SUPPORTED: {f!r} (section 16 is normative; a gateway "
                   f"without it must be graded with a profile that declares features.durable false)")

    def t(self, ms: float) -> float:
        return ms / 1000.0 * self.opts.scale

    def token(self, tenant: str) -> str:
        try:
            return self.opts.profile["tenants"][tenant]["token"]
        except KeyError as e:
            raise Fail(f"profile has no tenant {tenant!r}") from e

    # -- connections
    def open(self, name: str, transport: str = "tcp", subprotocols: list[str] | None = None,
             rcvbuf: int | None = None) -> Conn:
        if name in self.conns:
            self.conns[name].close()
        if transport == "tcp":
            try:
                tr = TcpTransport(self.opts.host, self.opts.port, rcvbuf=rcvbuf)
            except OSError as e:
                raise Fail(f"cannot connect to {self.opts.url}: {e}") from e
        else:
            tr = self.open_ws(subprotocols if subprotocols is not None else [SUBPROTOCOL[transport]])
            if tr.subprotocol != SUBPROTOCOL[transport] and subprotocols is None:
                raise Fail(f"gateway selected subprotocol {tr.subprotocol!r}, expected {SUBPROTOCOL[transport]!r}")
            if not tr.accept_ok:
                self.non_strict("Sec-WebSocket-Accept does not match the key (RFC 6455)")
        c = Conn(self, name, transport, tr)
        self.conns[name] = c
        return c

    def open_ws(self, subprotocols: list[str] | None, extra_headers=None) -> WsTransport:
        """A WebSocket upgrade; UNIMPLEMENTED when the endpoint is absent."""
        if not self.opts.ws_url:
            raise Unimplemented("no --ws-url given: the WebSocket endpoint is not tested")
        if self.opts.ws_probe:
            raise Unimplemented(self.opts.ws_probe)
        try:
            return WsTransport(self.opts.ws_url, subprotocols, extra_headers=extra_headers)
        except OSError as e:
            self.opts.ws_probe = f"WebSocket endpoint {self.opts.ws_url} unreachable: {e}"
            raise Unimplemented(self.opts.ws_probe) from e
        except WsRefused as e:
            if e.status in (404, 405, 501) or (e.status == 400 and not _mentions_ws(e)):
                self.opts.ws_probe = f"WebSocket endpoint absent: {self.opts.ws_url} answers HTTP {e.status}"
                raise Unimplemented(self.opts.ws_probe) from e
            raise

    def connect(self, name: str, tenant: str = "acme", transport: str = "tcp", versions=(1,), opts: dict | None = None,
                client_name: str | None = None, rcvbuf: int | None = None) -> Conn:
        """Open a connection and complete the handshake (HELLO, WELCOME)."""
        c = self.open(name, transport, rcvbuf=rcvbuf)
        hello = [codec.HELLO, list(versions), {"method": "token", "token": self.token(tenant)},
                 client_name or f"conformance/{self.case_id}"]
        if opts:
            hello.append(opts)
        c.send(hello)
        f = self.expect(c, [WELCOME, 1, {"$type": "str"}, {"$type": "str"}, tenant, {"$type": "map"}])
        c.welcome = f
        return c

    def conn(self, name: str) -> Conn:
        if name not in self.conns:
            raise Fail(f"scenario error: no connection named {name!r}")
        return self.conns[name]

    def close_all(self):
        for c in self.conns.values():
            try:
                c.close()
            except Exception:  # noqa: BLE001
                pass
        self.conns.clear()

    # -- expectations
    def _next(self, c: Conn, timeout_s: float, what: str) -> Frame:
        try:
            return c.next(timeout_s)
        except TimeoutError:
            raise Fail(f"{c.name}: nothing received within {timeout_s * 1000:.0f} ms; expected {what}") from None
        except Closed as e:
            raise Fail(f"{c.name}: connection closed ({e}); expected {what}") from None

    def _unsupported(self, f: Frame) -> bool:
        return (f.op == ERR and f.fields[1] == codec.CODES["NOT_SUPPORTED"]) or \
               (f.op == RES and f.fields[2] == codec.CODES["NOT_SUPPORTED"])

    def expect(self, c: Conn, pattern, timeout_ms: float = 3000, non_strict: list | None = None,
               why: str = "") -> Frame:
        f = self._next(c, self.t(timeout_ms), short(pattern))
        caps: dict = {}
        if match(pattern, f.view, self.vars, caps):
            self.vars.update(caps)
            return f
        for alt in non_strict or []:
            caps = {}
            if match(alt, f.view, self.vars, caps):
                self.vars.update(caps)
                self.non_strict(f"{c.name}: expected {short(pattern)}, got {f!r}" + (f" ({why})" if why else ""))
                return f
        if self._unsupported(f):
            self.not_supported(c, f, short(pattern))
        raise Fail(f"{c.name}: expected {short(pattern)}, got {f!r}" + (f" ({why})" if why else ""))

    def expect_set(self, c: Conn, patterns: list, timeout_ms: float = 3000) -> list[Frame]:
        """The next len(patterns) frames match the patterns in any order."""
        left = list(patterns)
        got = []
        while left:
            f = self._next(c, self.t(timeout_ms), "one of " + short(left))
            for i, p in enumerate(left):
                caps: dict = {}
                if match(p, f.view, self.vars, caps):
                    self.vars.update(caps)
                    left.pop(i)
                    got.append(f)
                    break
            else:
                if self._unsupported(f):
                    self.not_supported(c, f, "one of " + short(left))
                raise Fail(f"{c.name}: expected one of {short(left)}, got {f!r}")
        return got

    def expect_err(self, c: Conn, code: str, ref_op: int | None = None, ref_id: int | None = None,
                   fatal: bool | None = None, timeout_ms: float = 3000, also: list[str] | None = None,
                   alive: bool = True, ws_close: int | None = None) -> Frame:
        """An ERR with this code (by name). Fatal codes must be followed by the close (and, over
        WebSocket, the Close code of section 2.4); for non-fatal ones the connection must stay
        usable (a PING/PONG barrier passes)."""
        fatal = codec.FATAL[code] if fatal is None else fatal
        f = self._next(c, self.t(timeout_ms), f"ERR {code}")
        if f.op == RES and f.fields[2] == codec.CODES[code]:
            raise Fail(f"{c.name}: expected ERR {code}, got a RES with that status: {f!r}")
        if f.op != ERR:
            raise Fail(f"{c.name}: expected ERR {code}, got {f!r}")
        got = codec.name_of(f.fields[1])
        if got != code:
            lenient = set(also or [])
            if code in codec.GRAMMAR_CODES:
                lenient |= codec.GRAMMAR_CODES
            if got in lenient and codec.FATAL.get(got, False) == fatal:
                self.non_strict(f"{c.name}: expected ERR {code}, got ERR {got} (an acceptable alternative): {f!r}")
            elif got == "NOT_SUPPORTED":
                self.not_supported(c, f, f"ERR {code}")
            else:
                raise Fail(f"{c.name}: expected ERR {code}, got ERR {got}: {f!r}")
        ro = f.fields[3] if len(f.fields) > 3 and f.fields[3] is not None else 0
        ri = f.fields[4] if len(f.fields) > 4 and f.fields[4] is not None else 0
        # A non-fatal ERR about a frame must reference it so the client can match it (section 7.10):
        # a wrong reference fails. On a fatal ERR the reference is informational: NON-STRICT.
        for what, have, want in (("ref_op", ro, ref_op), ("ref_id", ri, ref_id)):
            if want is not None and have != want:
                msg = f"{c.name}: ERR {got} has {what} {have}, expected {want}"
                if fatal or codec.FATAL.get(got, False):
                    self.non_strict(msg)
                else:
                    raise Fail(msg + f": {f!r}")
        if fatal:
            self.expect_close(c, after=f"the fatal ERR {got}",
                              ws_code=ws_close or WS_CLOSE_FOR.get(got, 1008), ws_reason=got)
        elif alive:
            self.alive(c, after=f"the non-fatal ERR {got}")
        return f

    def expect_res(self, c: Conn, req_id: int, status: str | int = 0, payload=None, headers=None,
                   timeout_ms: float = 3000, also: list[str] | None = None) -> Frame:
        want = status if isinstance(status, int) else codec.CODES[status]
        f = self._next(c, self.t(timeout_ms), f"RES {req_id} status {status}")
        if f.op == ERR:
            raise Fail(f"{c.name}: expected RES {req_id} with status {status}, got ERR (a REQ is answered by RES, "
                       f"section 7.7): {f!r}")
        if f.op != RES:
            raise Fail(f"{c.name}: expected RES {req_id} with status {status}, got {f!r}")
        if f.fields[1] != req_id:
            raise Fail(f"{c.name}: expected RES for req_id {req_id}, got {f!r}")
        got = f.fields[2]
        if got != want:
            gname = codec.name_of(got) if got else "0 (reply)"
            lenient = set(also or [])
            if isinstance(status, str) and status in codec.GRAMMAR_CODES:
                lenient |= codec.GRAMMAR_CODES
            if gname in lenient:
                self.non_strict(f"{c.name}: expected RES status {status}, got {gname}: {f!r}")
            else:
                raise Fail(f"{c.name}: expected RES status {status}, got {gname}: {f!r}")
        if want != 0 and not isinstance(f.fields[3], bytes):
            raise Fail(f"{c.name}: RES payload must be bin: {f!r}")
        if payload is not None and not match(payload, f.view[3], self.vars, {}):
            raise Fail(f"{c.name}: RES payload {short(f.view[3])}, expected {short(payload)}")
        if headers is not None:
            h = f.view[4] if len(f.view) > 4 else None
            if not match(headers, h, self.vars, {}):
                raise Fail(f"{c.name}: RES headers {short(h)}, expected {short(headers)}")
        if want != 0 and len(f.fields) > 4 and f.fields[4]:
            self.non_strict(f"{c.name}: an error RES carries headers (section 7.8: absent otherwise)")
        return f

    def expect_close(self, c: Conn, timeout_ms: float = 3000, after: str = "", ws_code: int | None = None,
                     ws_reason: str | None = None):
        if c.queue:
            raise Fail(f"{c.name}: frame(s) after {after or 'the last one'}: {list(c.queue)!r}")
        deadline = time.monotonic() + self.t(timeout_ms)
        while True:
            try:
                f = c._read(max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise Fail(f"{c.name}: connection still open {timeout_ms:.0f} ms after {after or 'the step'}") from None
            except Closed as e:
                if c.kind != "tcp" and ws_code is not None:
                    if e.ws_code is None:
                        self.non_strict(f"{c.name}: TCP closed without a WebSocket Close frame ({ws_code} expected)")
                    elif e.ws_code != ws_code:
                        self.non_strict(f"{c.name}: WebSocket close code {e.ws_code}, expected {ws_code} "
                                        f"(section 2.4)")
                    elif ws_reason and e.ws_reason != ws_reason:
                        self.non_strict(f"{c.name}: WebSocket close reason {e.ws_reason!r}, expected {ws_reason!r}")
                return e
            if f.op == PING and not after:
                continue
            raise Fail(f"{c.name}: frame after {after or 'the step'} instead of the close: {f!r}")

    def expect_nothing(self, c: Conn, ms: float):
        if c.queue:
            raise Fail(f"{c.name}: unexpected frame(s): {list(c.queue)!r}")
        deadline = time.monotonic() + self.t(ms)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                f = c._read(left)
            except TimeoutError:
                return
            except Closed as e:
                raise Fail(f"{c.name}: connection closed ({e}) where nothing was expected") from None
            if f.op == PING and c.auto_pong:
                c.pings += 1
                c.send([PONG])
                continue
            raise Fail(f"{c.name}: unexpected frame {f!r} (nothing expected within {ms:.0f} ms)")

    def alive(self, c: Conn, after: str = ""):
        try:
            c.flush(self.t(3000))
        except TimeoutError:
            raise Fail(f"{c.name}: no PONG to a PING after {after}") from None
        except Closed as e:
            raise Fail(f"{c.name}: connection closed after {after} ({e}); it must stay open") from None

    def sub(self, c: Conn, sid: int, subject: str, queue: str | None = None, opts: dict | None = None):
        """SUB and its OK. MSGs for the sid may arrive before the OK (section 7.4): they stay queued."""
        frame = [codec.SUB, sid, subject]
        if queue or opts is not None:
            frame.append(queue)
        if opts is not None:
            frame.append(opts)
        c.send(frame)
        early = []
        while True:
            f = self._next(c, self.t(3000), f"OK [9, 4, {sid}]")
            if f.op == MSG and f.fields[1] == sid:
                early.append(f)
                continue
            if match([OK, 4, sid], f.view, self.vars, {}):
                break
            if self._unsupported(f):
                self.not_supported(c, f, f"[9, 4, {sid}]")
            raise Fail(f"{c.name}: expected [9, 4, {sid}], got {f!r}")
        c.queue.extendleft(reversed(early))


def _mentions_ws(e: WsRefused) -> bool:
    return b"websocket" in e.body.lower() or b"subprotocol" in e.body.lower() or b"upgrade" in e.body.lower()


# ------------------------------------------------------------------------------------------------
# Values in scenario files

def resolve(ctx: Context, v: Any) -> Any:
    """Expand the $-forms a scenario may use in frames it sends."""
    if isinstance(v, dict) and len(v) == 1:
        (k, a), = v.items()
        if k == "$var":
            return ctx.vars[a]
        if k == "$repeat":
            return resolve(ctx, a[0]) * resolve(ctx, a[1])
        if k == "$code":
            return codec.code_of(a)
        if k == "$hex":
            return bytes.fromhex(a)
        if k == "$token":
            return ctx.token(a)
        if k == "$limit":  # [conn, key]: a value from that connection's WELCOME limits
            return ctx.conn(a[0]).welcome.fields[5][a[1]]
        if k == "$add":
            return sum(resolve(ctx, x) for x in a)
        if k == "$nonce":  # a token unique to this run of the case (msg_ids that must not repeat across runs)
            return ctx.nonce
        if k == "$concat":
            return "".join(str(resolve(ctx, x)) for x in a)
    if isinstance(v, list):
        return [resolve(ctx, x) for x in v]
    if isinstance(v, dict):
        return {k: resolve(ctx, x) for k, x in v.items()}
    return v


def resolve_pattern(ctx: Context, p: Any) -> Any:
    """Patterns keep their $-forms except the sending-only ones, which are expanded."""
    if isinstance(p, dict) and len(p) == 1:
        (k, a), = p.items()
        if k in ("$token", "$limit", "$add", "$repeat", "$nonce", "$concat"):
            return resolve(ctx, p)
        if k in ("$has", "$oneof", "$not", "$all"):
            return {k: resolve_pattern(ctx, a)}
        if k.startswith("$"):
            return p
    if isinstance(p, list):
        return [resolve_pattern(ctx, x) for x in p]
    if isinstance(p, dict):
        return {k: resolve_pattern(ctx, x) for k, x in p.items()}
    return p


def to_frame(ctx: Context, v: list) -> list:
    return codec.from_view(resolve(ctx, v))


# ------------------------------------------------------------------------------------------------
# The step interpreter for scenario files (the step vocabulary is in scenarios/schema.json)

def run_steps(ctx: Context, steps: list, transport: str = "tcp"):
    for i, st in enumerate(steps):
        try:
            run_step(ctx, st, transport)
        except (Fail, Unimplemented) as e:
            e.args = (f"step {i + 1} {short(st)}: {e.args[0]}",)
            raise


def run_step(ctx: Context, st: dict, transport: str):
    t_ms = st.get("timeout_ms", 3000)
    if "connect" in st:
        tr = st.get("transport", transport)
        if st.get("hello", True):
            ctx.connect(st["connect"], st.get("as", "acme"), tr, versions=st.get("versions", [1]),
                        opts=st.get("opts"), client_name=st.get("name"))
        else:
            ctx.open(st["connect"], tr, subprotocols=st.get("subprotocols"))
    elif "send" in st:
        c = ctx.conn(st["send"])
        for _ in range(st.get("times", 1)):
            c.send(to_frame(ctx, st["frame"]))
    elif "send_hex" in st:
        ctx.conn(st["send_hex"]).send_raw(bytes.fromhex(st["hex"]))
    elif "send_text" in st:
        ctx.conn(st["send_text"]).send_ws(OP_TEXT, st["text"].encode("utf-8"), st.get("fragments", 1))
    elif "send_ws" in st:
        data = bytes.fromhex(st["hex"]) if "hex" in st else st.get("text", "").encode("utf-8")
        opcode = {"text": OP_TEXT, "binary": OP_BIN}[st.get("type", "binary")]
        ctx.conn(st["send_ws"]).send_ws(opcode, data, st.get("fragments", 1))
    elif "sub" in st:
        ctx.sub(ctx.conn(st["sub"]), st["sid"], st["subject"], st.get("queue"), st.get("opts"))
    elif "expect" in st:
        c = ctx.conn(st["expect"])
        if "frames" in st:
            ctx.expect_set(c, resolve_pattern(ctx, st["frames"]), t_ms)
        else:
            ctx.expect(c, resolve_pattern(ctx, st["frame"]), t_ms,
                       non_strict=resolve_pattern(ctx, st.get("non_strict", [])), why=st.get("why", ""))
    elif "expect_err" in st:
        ctx.expect_err(ctx.conn(st["expect_err"]), st["code"], st.get("ref_op"), st.get("ref_id"),
                       st.get("fatal"), t_ms, st.get("also"), st.get("alive", True), st.get("ws_close"))
    elif "expect_res" in st:
        ctx.expect_res(ctx.conn(st["expect_res"]), st["req_id"], st.get("status", 0),
                       resolve_pattern(ctx, st.get("payload")), resolve_pattern(ctx, st.get("headers")), t_ms,
                       st.get("also"))
    elif "expect_ok" in st:
        ctx.expect(ctx.conn(st["expect_ok"]), [OK, st["ref_op"], st["ref_id"]], t_ms)
    elif "expect_close" in st:
        ctx.expect_close(ctx.conn(st["expect_close"]), t_ms, ws_code=st.get("ws_code"),
                         ws_reason=st.get("ws_reason"))
    elif "expect_nothing" in st:
        ctx.expect_nothing(ctx.conn(st["expect_nothing"]), st.get("ms", 300))
    elif "expect_bytes" in st:
        c = ctx.conn(st["expect_bytes"])
        data, closed = c.tr.recv_raw_until_close(ctx.t(t_ms))
        want = bytes.fromhex(st["hex"]) if "hex" in st else st["text"].encode("utf-8")
        if data != want:
            if st.get("prefix_ok") and data.startswith(want):
                pass
            else:
                raise Fail(f"{c.name}: received {data[:200]!r}, expected {want[:200]!r}")
        if st.get("close", True) and not closed:
            raise Fail(f"{c.name}: connection still open {t_ms} ms after the reply")
    elif "auto_pong" in st:
        ctx.conn(st["auto_pong"]).auto_pong = st.get("enabled", True)
    elif "flush" in st:
        ctx.alive(ctx.conn(st["flush"]))
    elif "wait" in st:
        time.sleep(ctx.t(st["wait"]))
    elif "close" in st:
        c = ctx.conns.pop(st["close"])
        c.close()
    else:
        raise Fail(f"scenario error: unknown step {short(st)}")


# ------------------------------------------------------------------------------------------------
# Cases

@dataclass
class Case:
    id: str
    description: str
    expectation: str
    spec: str = ""
    source: str = ""
    run: Callable[[Context], None] | None = None
    last: bool = False  # run after every other case (drain)

    @property
    def key(self):
        return tuple(int(x) for x in self.id.split("."))


def execute(case: Case, opts: Options) -> dict:
    ctx = Context(opts, case.id)
    t0 = time.monotonic()
    grade, detail = OK_, ""
    try:
        case.run(ctx)
        if ctx.notes:
            grade, detail = NON_STRICT, "; ".join(ctx.notes)
    except Unimplemented as e:
        grade, detail = UNIMPLEMENTED, str(e)
    except Fail as e:
        grade, detail = FAILED, str(e)
    except WsRefused as e:
        grade, detail = FAILED, f"WebSocket upgrade refused: {e}"
    except (OSError, socket.error) as e:
        grade, detail = FAILED, f"socket error: {e!r}"
    except Exception as e:  # noqa: BLE001 - a runner bug must not stop the suite
        grade, detail = FAILED, f"runner error: {e!r}"
    finally:
        ctx.close_all()
    if grade == FAILED and ctx.notes:
        detail += " [also: " + "; ".join(ctx.notes) + "]"
    return {"grade": grade, "description": case.description, "expectation": case.expectation,
            "spec": case.spec, "source": case.source, "detail": detail,
            "duration_ms": round((time.monotonic() - t0) * 1000, 1)}
