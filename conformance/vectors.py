"""Group 12: the wire vectors of conformance/vectors/ sent live to the gateway.

  12.1.<vector id>  every invalid client vector, sent after the handshake: the error code of the
                    vector, ERR or RES as section 7 says, and the close exactly when section 17's
                    "closes" column says so; a non-fatal one leaves the connection usable and the
                    frame is not acted on.
  12.2.<vector id>  every invalid client vector sent as the first frame: MALFORMED_FRAME for bodies
                    that fail decoding (section 3.4 checks precede the handshake), HANDSHAKE_REQUIRED
                    for well-formed non-HELLO frames, both fatal.
  12.3.<vector id>  every valid client vector (canonical or not) sent live: it is accepted with the
                    effect its decoded form has (lenient decoding, section 3.3).

Vectors "from": "gateway" describe what a client's decoder must reject or accept; they are not sent
to a gateway (a client codec runs them through `python -m conformance.vectors_check`).
"""
from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import msgpack

from . import codec
from .codec import ERR, MSG, OK, PONG, PUB, REQ, SUB
from .engine import Case, Context

VECTOR_DIR = Path(__file__).resolve().parent / "vectors"
SPY = 4000000000  # sid of the ">" subscription that watches whether a frame was acted on


def load_vectors() -> list[dict]:
    out = []
    for path in sorted(VECTOR_DIR.glob("*.json")):
        if path.name == "schema.json":
            continue
        doc = json.loads(path.read_text())
        for c in doc["cases"]:
            c["area"] = doc["area"]
            out.append(c)
    return out


def _body(v: dict) -> bytes:
    return bytes.fromhex(v["hex"])[4:]


def _lenient(v: dict):
    try:
        return msgpack.unpackb(_body(v), raw=False, strict_map_key=False)
    except Exception:  # noqa: BLE001
        try:
            return msgpack.unpackb(_body(v), raw=True, strict_map_key=False)
        except Exception:  # noqa: BLE001
            return None


def _op(v: dict):
    f = _lenient(v)
    return f[0] if isinstance(f, list) and f and isinstance(f[0], int) and not isinstance(f[0], bool) else None


def _field(v: dict, i: int, default=0):
    f = _lenient(v)
    return f[i] if isinstance(f, list) and len(f) > i and f[i] is not None else default


# ------------------------------------------------------------------------------------------------
# 12.1: invalid client vectors after the handshake

def after_handshake(v: dict):
    err = v["error"]

    def run(ctx: Context):
        c = ctx.connect("c", "acme")
        ctx.sub(c, SPY, ">")
        if "max_frame" in v:
            # The vector is checked against a tiny maximum; live, the same rule is exercised with a
            # length prefix one above the negotiated max_frame (section 2.1).
            limit = c.welcome.fields[5]["max_frame"]
            c.send_raw(struct.pack(">I", limit + 1) + _body(v))
            ctx.expect_err(c, err, fatal=True)
            return
        c.send_raw(bytes.fromhex(v["hex"]))
        op = _op(v)
        if codec.FATAL[err]:
            ctx.expect_err(c, err)
            return
        if err in ("UNKNOWN_OP", "UNEXPECTED_OP"):
            ctx.expect_err(c, err, ref_op=op)
        elif op == REQ:
            ctx.expect_res(c, _field(v, 1), err)
            ctx.alive(c, "the RES")
        elif op == SUB:
            sid = _field(v, 1)
            ctx.expect_err(c, err, ref_op=SUB, ref_id=sid)
            c.send([SUB, sid, "conformance.vector.check"])  # no subscription was created under that sid
            ctx.expect(c, [OK, SUB, sid], why="the refused SUB must not hold its sid")
        else:
            ctx.expect_err(c, err, ref_op=op, ref_id=_field(v, 5) if op == PUB else None)
        ctx.expect_nothing(c, 150)  # nothing was published: the spy sees no MSG

    exp = f"ERR {err}" if err not in codec.GRAMMAR_CODES or _op(v) != REQ else f"RES status {err}"
    exp += ", then the close" if codec.FATAL[err] else ", connection stays usable, the frame is not acted on"
    return Case(f"12.1.{v['id']}", f"after HELLO: {v['description']} (vector {v['id']})", exp, "3.4, 17",
                f"vectors/{v['area']}.json", run)


# ------------------------------------------------------------------------------------------------
# 12.2: invalid client vectors as the first frame

def before_handshake(v: dict):
    err = v["error"]
    expected = "MALFORMED_FRAME" if err == "MALFORMED_FRAME" else "HANDSHAKE_REQUIRED"
    op = _op(v)

    def run(ctx: Context):
        c = ctx.open("c")
        c.send_raw(bytes.fromhex(v["hex"]))
        if expected == "HANDSHAKE_REQUIRED":
            ctx.expect_err(c, expected, ref_op=op if op else None)
        else:
            ctx.expect_err(c, expected)

    return Case(f"12.2.{v['id']}", f"as the first frame: {v['description']} (vector {v['id']})",
                f"ERR {expected} and the close", "3.4, 6.2", f"vectors/{v['area']}.json", run)


# ------------------------------------------------------------------------------------------------
# 12.3: valid client vectors sent live

def _msg_pattern(decoded: list, tenant: str = "acme") -> list:
    subject, payload = decoded[1], decoded[2]
    headers = dict(decoded[3]) if len(decoded) > 3 and decoded[3] else {}
    headers["busgate-tenant"] = tenant
    reply = decoded[4] if len(decoded) > 4 and decoded[4] else None
    return [MSG, SPY, subject, payload, headers] + ([reply] if reply else [])


DURABLE_KEYS = {"durable", "ack", "max_inflight", "deliver", "flow"}
DURABLE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _opts_problem(opts: dict) -> str | None:
    """The INVALID_OPTION rule of section 16.1 for the values of a durable SUB's opts."""
    checks = {
        "durable": lambda x: isinstance(x, str) and DURABLE_NAME.fullmatch(x) is not None,
        "ack": lambda x: x == "explicit",
        "max_inflight": lambda x: isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= codec.UINT32_MAX,
        "deliver": lambda x: x in ("all", "new"),
        "flow": lambda x: x == "credit",
    }
    for k, ok in checks.items():
        if k in opts and not ok(opts[k]):
            return k
    return None


def _covers(pattern: str, subject: str) -> bool:
    """Whether every subject matching `subject` (which may hold wildcards) matches `pattern`."""
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or s[i] == ">" or (tok != "*" and tok != s[i]):
            return False
    return len(s) == len(p)


def sub_outcome(ctx: Context, decoded: list, tenant: str = "acme") -> tuple[list[str], str]:
    """What section 16.1 makes of a SUB's opts: the error codes a conforming gateway may answer
    (empty: OK) and why."""
    opts = decoded[4] if len(decoded) > 4 and decoded[4] else {}
    if not opts:
        return [], "no options"
    unknown = set(opts) - DURABLE_KEYS
    if unknown:
        return ["NOT_SUPPORTED"], f"unknown opts key(s) {sorted(unknown)}"
    if "durable" not in opts:
        if set(opts) & {"ack", "deliver", "flow"}:
            codes = ["NOT_SUPPORTED"] + (["INVALID_OPTION"] if _opts_problem(opts) else [])
            return codes, "ack, deliver or flow without durable (and any bad value: the order is not specified)"
        # max_inflight alone: 16.1 gives it a meaning only on a durable subscription and does not list
        # it among the keys refused without durable, so a plain subscription is accepted too.
        return ["", "NOT_SUPPORTED", "INVALID_OPTION"], "max_inflight without durable (16.1 leaves it open)"
    bad = _opts_problem(opts)
    if bad:
        return ["INVALID_OPTION"], f"bad opts value for {bad}"
    streams = ctx.opts.profile.get("durable", {}).get("streams", {}).get(tenant, {})
    if not any(_covers(pat, decoded[2]) for st in streams.values() for pat in st["subjects"]):
        return ["UNKNOWN_STREAM"], "no stream of the tenant stores the subject"
    return [], "a durable subscription on a stream subject"


def valid_live(v: dict):
    d = v["decoded"]
    op = d[0]
    kind = "canonical" if v.get("canonical", True) else "non-canonical"

    def run(ctx: Context):
        if op == codec.HELLO:
            c = ctx.open("c")
            c.send_raw(bytes.fromhex(v["hex"]))
            method = d[2].get("method")
            ctx.expect_err(c, "AUTH_FAILED" if method == "token" else "AUTH_METHOD_UNSUPPORTED", ref_op=1)
            return
        c = ctx.connect("c", "acme")
        if op == PUB:
            ctx.sub(c, SPY, ">")
            c.send_raw(bytes.fromhex(v["hex"]))
            if d[1].startswith("_INBOX."):
                ctx.expect_err(c, "PERMISSION_DENIED", ref_op=PUB)
                return
            ack = d[5] if len(d) > 5 and d[5] else 0
            pats = [_msg_pattern(d)] + ([[OK, PUB, ack]] if ack else [])
            ctx.expect_set(c, pats)
        elif op == SUB:
            codes, why = sub_outcome(ctx, d)
            if "durable" in (d[4] if len(d) > 4 and d[4] else {}):
                ctx.require_durable()
            c.send_raw(bytes.fromhex(v["hex"]))
            if not codes:
                ctx.expect(c, [OK, SUB, d[1]], why=why)
            else:
                nums = [codec.CODES[x] for x in codes if x]
                alts = ([[OK, SUB, d[1]]] if "" in codes else []) + \
                    [[ERR, {"$oneof": nums}, {"$type": "str"}, SUB, d[1]]]
                f = ctx.expect(c, {"$oneof": alts}, why=f"{why}: {' or '.join(x or 'OK' for x in codes)}")
                if f.op == ERR:
                    ctx.alive(c, "the non-fatal ERR")
                    c.send([SUB, d[1], "conformance.vector.check"])  # the refused SUB left its sid free
                    ctx.expect(c, [OK, SUB, d[1]], why="a refused SUB must not hold its sid")
        elif op == codec.UNSUB:
            c.send_raw(bytes.fromhex(v["hex"]))
            ctx.alive(c, "UNSUB of an unknown sid")
        elif op == REQ:
            c.send_raw(bytes.fromhex(v["hex"]))
            ctx.expect_res(c, d[1], "NO_RESPONDERS")
        elif op == codec.PING:
            c.send_raw(bytes.fromhex(v["hex"]))
            ctx.expect(c, [PONG])
        elif op == codec.PONG:
            c.send_raw(bytes.fromhex(v["hex"]))
            ctx.expect_nothing(c, 150)
        elif op in codec.DURABLE_OPS:
            c.send_raw(bytes.fromhex(v["hex"]))
            ctx.expect_err(c, "UNKNOWN_SID", ref_op=op, ref_id=d[1])
        else:
            ctx.fail(f"runner has no live use for op {op}")
        ctx.alive(c, "the vector")
        ctx.expect_nothing(c, 100)

    exp = {codec.HELLO: "decoded: the handshake fails only on the (unknown) credentials",
           PUB: "published as decoded: the spy subscription receives it (and OK for an ack)",
           SUB: "as section 16.1 says for its opts: OK; NOT_SUPPORTED for unknown keys or ack/deliver/flow without "
                "durable; INVALID_OPTION for a bad value; UNKNOWN_STREAM for a subject no stream stores",
           codec.UNSUB: "ignored (unknown sid), connection usable", REQ: "RES NO_RESPONDERS for the req_id",
           codec.PING: "PONG", codec.PONG: "ignored",
           **{o: "ERR UNKNOWN_SID (ref_op = the op, ref_id = sid): no subscription is live"
              for o in codec.DURABLE_OPS}}.get(op, "")
    return Case(f"12.3.{v['id']}", f"valid {kind} vector sent live: {v['description']} (vector {v['id']})", exp,
                "3.3, 7", f"vectors/{v['area']}.json", run)


def vector_cases() -> list[Case]:
    cases = []
    for v in load_vectors():
        if v["from"] != "client":
            continue
        if not v["valid"]:
            cases.append(after_handshake(v))
            if "max_frame" not in v:
                cases.append(before_handshake(v))
        else:
            cases.append(valid_live(v))
    return cases
