"""busgate.protocol against every conformance vector (docs/protocol.md section 19) and the JSON
mapping of section 4. Pure codec tests: no gateway."""
from __future__ import annotations

import json
import pathlib

import pytest

from busgate import errors, protocol as P

VECTORS = pathlib.Path(__file__).resolve().parents[3] / "conformance" / "vectors"
CASES = [c for f in sorted(VECTORS.glob("*.json")) if f.name != "schema.json"
         for c in json.loads(f.read_text())["cases"]]


def test_every_vector_file_is_loaded():
    areas = {json.loads(f.read_text())["area"] for f in VECTORS.glob("*.json") if f.name != "schema.json"}
    assert areas == {"handshake", "pubsub", "request", "control", "durable", "invalid"}
    assert len(CASES) >= 200


def _decode_stream(data: bytes, sender: str, max_frame: int, chunk: int | None = None) -> list[P.Frame]:
    parser = P.StreamParser(max_frame)
    frames = []
    step = chunk or len(data)
    for i in range(0, len(data), step):
        parser.feed(data[i:i + step])
        frames += list(parser.frames(sender))
    assert parser.buffered == 0
    return frames


def _canon(v) -> str:
    return json.dumps(v, ensure_ascii=False)  # keeps member order and tells true from 1


@pytest.mark.parametrize("case", [c for c in CASES if c["valid"]], ids=lambda c: c["id"])
def test_valid_vector(case):
    data = bytes.fromhex(case["hex"])
    max_frame = case.get("max_frame", P.DEFAULT_MAX_FRAME)
    (frame,) = _decode_stream(data, case["from"], max_frame)
    assert _canon(P.to_json(frame)) == _canon(case["decoded"])
    # byte by byte gives the same frame: partial frames are never an error
    assert _decode_stream(data, case["from"], max_frame, chunk=1) == [frame]
    # the JSON text mapping round-trips, and `decoded` itself maps back to the same frame
    assert P.from_json_text(P.to_json_text(frame), case["from"]) == frame
    assert P.from_json(case["decoded"], case["from"]) == frame
    if case.get("canonical", True):
        assert P.encode_framed(frame).hex() == case["hex"]
        assert P.encode_framed(P.from_json(case["decoded"], case["from"])).hex() == case["hex"]
    else:
        assert P.encode_framed(frame).hex() != case["hex"]


@pytest.mark.parametrize("case", [c for c in CASES if not c["valid"]], ids=lambda c: c["id"])
def test_invalid_vector(case):
    data = bytes.fromhex(case["hex"])
    with pytest.raises(errors.BusgateError) as info:
        _decode_stream(data, case["from"], case.get("max_frame", P.DEFAULT_MAX_FRAME))
    assert info.value.name == case["error"]
    assert info.value.code == errors.CODES[case["error"]]


def test_frame_too_large_is_reported_from_the_length_prefix_alone():
    parser = P.StreamParser(max_frame=16)
    parser.feed(bytes.fromhex("00000011"))  # no body byte has arrived yet
    with pytest.raises(errors.FrameTooLarge):
        parser.next_body()


def test_many_frames_in_one_read_and_one_frame_over_many_reads():
    a = P.encode_framed(P.Msg(1, "a.b", b"x" * 100, {"busgate-tenant": "demo"}))
    b = P.encode_framed(P.Ping())
    parser = P.StreamParser(P.DEFAULT_MAX_FRAME)
    parser.feed(a + b + a[:7])
    assert [type(f) for f in parser.frames()] == [P.Msg, P.Ping]
    parser.feed(a[7:])
    assert list(parser.frames()) == [P.decode(a[4:])]


# ---------------------------------------------------------------- JSON mapping (section 4)

def test_json_payloads():
    assert P.to_json_text(P.Pub("orders.created", b"hello")) == '[3,"orders.created","hello"]'
    assert P.to_json_text(P.Pub("blobs.raw", b"\xff\xfe\x00\x01")) == '[3,"blobs.raw",{"base64":"//4AAQ=="}]'
    # a sender may always use the base64 form
    assert P.from_json_text('[3,"orders.created",{"base64":"aGVsbG8="}]', P.CLIENT) == P.Pub("orders.created", b"hello")
    assert P.to_json_text(P.Msg(1, "café", "é".encode(), {"busgate-tenant": "acme"})) == \
        '[6,1,"café","é",{"busgate-tenant":"acme"}]'


@pytest.mark.parametrize("text", [
    '[3,"a.b","x"',                                   # not JSON
    '[3,"a.b",{"base64":"aGVsbG8"}]',                 # no padding
    '[3,"a.b",{"base64":"aGVs bG8="}]',               # not the standard alphabet
    '[3,"a.b",{"base64":"aGVsbG8=","x":1}]',          # a second member
    '[3,"a.b",{"b64":"aGVsbG8="}]',
    '[3,"a.b",5]',                                    # payload of the wrong JSON type
    '[4,1.0,"a.b"]',                                  # fraction where a uint is expected
    '[4,1e0,"a.b"]',                                  # exponent
    '[4,-1,"a.b"]',                                   # minus
    '[4,-0,"a.b"]',
    '[3,"a.b","x",{"k":"v","k":"w"}]',                # repeated member name
    '[3,"a.\\ud800","x"]',                            # escaped lone surrogate
    '[3,"a.b",NaN]',
    '{"op":3}',
    '[]',
    '',
])
def test_json_text_rejects(text):
    with pytest.raises(errors.MalformedFrame):
        P.from_json_text(text, P.CLIENT)


def test_json_text_unknown_op_and_direction():
    with pytest.raises(errors.UnknownOp):
        P.from_json_text("[99]", P.GATEWAY)
    with pytest.raises(errors.UnexpectedOp):
        P.from_json_text('[6,1,"a","x"]', P.CLIENT)


def test_json_text_too_large():
    with pytest.raises(errors.FrameTooLarge):
        P.from_json_text('[3,"a.b","' + "x" * 100 + '"]', P.CLIENT, max_frame=64)


def test_json_opts_keep_floats_and_any_values():
    f = P.from_json_text('[1,[1],{"method":"token","token":"t"},null,{"x":1.5,"y":[true,null,{"z":-3}]}]', P.CLIENT)
    assert f.opts == {"x": 1.5, "y": [True, None, {"z": -3}]}


# ---------------------------------------------------------------- grammar helpers used by the client

@pytest.mark.parametrize("subject,wild,err", [
    ("", False, errors.InvalidSubject), ("a..b", False, errors.InvalidSubject),
    ("a b", False, errors.InvalidSubject), ("a.*", False, errors.WildcardNotAllowed),
    ("a*", True, errors.InvalidSubject), ("a.>.b", True, errors.InvalidSubject),
    ("$SYS.x", True, errors.ReservedSubject), ("x" * 257, False, errors.InvalidSubject),
])
def test_subject_grammar(subject, wild, err):
    with pytest.raises(err):
        P.check_subject(subject, wild)


def test_subject_grammar_accepts():
    for s in ("orders.created", "café.commandé", "_INBOX.gw1.x", "x" * 256):
        P.check_subject(s)
    for s in ("orders.*", "orders.>", ">", "a.*.c.>"):
        P.check_subject(s, wildcards=True)


def test_subject_matching_table():
    table = [("orders.created", "orders.created", True), ("orders.created", "Orders.created", False),
             ("orders.*", "orders.created", True), ("orders.*", "orders.created.eu", False),
             ("orders.*", "orders", False), ("*.created", "orders.created", True), ("a.*.c", "a.b.c", True),
             ("orders.>", "orders.created", True), ("orders.>", "orders.created.eu", True),
             ("orders.>", "orders", False), (">", "x.y", True), ("a.*.c.>", "a.b.c.d.e", True)]
    for pattern, subject, want in table:
        assert P.subject_matches(pattern, subject) is want, (pattern, subject)


def test_headers_and_queue_grammar():
    with pytest.raises(errors.ReservedHeader):
        P.check_headers({"Busgate-Foo": "1"})
    with pytest.raises(errors.InvalidHeader):
        P.check_headers({"a b": "1"})
    with pytest.raises(errors.InvalidHeader):
        P.check_headers({"k": "a\nb"})
    P.check_headers({"busgatex": "1", "trace-id": ""})
    with pytest.raises(errors.InvalidQueue):
        P.check_queue("a.b")
    P.check_queue("workers")


def test_errors_are_typed_and_carry_codes():
    e = errors.error_for(500, "no responders")
    assert isinstance(e, errors.NoResponders) and isinstance(e, errors.RequestError) and e.code == 500
    assert e.name == "NO_RESPONDERS" and not e.fatal
    assert isinstance(errors.error_for(501), TimeoutError)
    assert errors.error_for(601).fatal
    u = errors.error_for(799, "future")
    assert isinstance(u, errors.UnknownError) and u.code == 799 and not u.fatal
    for name, code in errors.CODES.items():
        assert errors.error_for(code).name == name


# ---------------------------------------------------------------- durable consumption (section 16)

def test_durable_frames_encode_canonically_and_round_trip():
    cases = [
        (P.Progress(20, 1), "00000004931114" + "01"),
        (P.Term(20, 1), "00000004931214" + "01"),
        (P.Term(20, 7, "bad input"), "0000000e941214" + "07" + "a9" + b"bad input".hex()),
        (P.Msg(20, "jobs.resize", b"img-1", {"busgate-tenant": "acme"}, None, 1, 2), None),
        (P.Pub("jobs.score", b"x", None, None, 5, "job-1"), None),
        (P.Pub("jobs.score", b"x", msg_id="job-1"), None),
    ]
    for frame, want in cases:
        data = P.encode_framed(frame)
        if want is not None:
            assert data.hex() == want
        sender = P.GATEWAY if isinstance(frame, P.Msg) else P.CLIENT
        assert P.decode_framed(data, sender) == frame
        assert P.from_json_text(P.to_json_text(frame), sender) == frame
    # absent fields before a present one are nil; the encoder and the PUB fast path agree
    assert P.to_json(P.Pub("jobs.score", b"x", msg_id="job-1")) == [3, "jobs.score", "x", None, None, None, "job-1"]
    for args in (("a.b", b"x", None, None, None, "k"), ("a.b", b"x", {"h": "v"}, "r.s", 9, "k"),
                 ("a.b", b"x", None, None, 3, None)):
        assert P.encode_pub(*args) == P.encode(P.Pub(*args))
    assert P.to_json(P.Msg(1, "a", b"x", None, None, 5, 1)) == [6, 1, "a", "x", None, None, 5, 1]


def test_durable_ops_are_client_only_and_strictly_typed():
    with pytest.raises(errors.UnexpectedOp):
        P.decode(P.encode(P.Progress(1, 2)), P.GATEWAY)
    with pytest.raises(errors.UnexpectedOp):
        P.decode(P.encode(P.Term(1, 2)), P.GATEWAY)
    import msgpack
    for items in ([17, 1], [17, 1, -1], [18, 1, 2, b"bin reason"], [18, "1", 2], [17, 1, 2.0]):
        with pytest.raises(errors.MalformedFrame):
            P.decode(msgpack.packb(items, use_bin_type=True), P.CLIENT)
    with pytest.raises(errors.UnknownOp):
        P.decode(msgpack.packb([19]), P.CLIENT)
    # trailing nils and an unknown trailing field are accepted
    assert P.decode(msgpack.packb([18, 1, 2, None, "future"]), P.CLIENT) == P.Term(1, 2)


def test_msg_id_and_durable_name_grammar():
    for ok in ("a", "job-1", "x" * 128, "!~", "order:42/v1"):
        P.check_msg_id(ok)
    for bad in ("", "x" * 129, "has space", "tab\t", "é", "\x7f"):
        with pytest.raises(errors.InvalidOption):
            P.check_msg_id(bad)
    for ok in ("scorers", "a_b-C9", "x" * 64):
        P.check_durable_name(ok)
    for bad in ("", "x" * 65, "a.b", "a b", "é"):
        with pytest.raises(errors.InvalidOption):
            P.check_durable_name(bad)


def test_durable_error_codes():
    for code, cls, family in ((309, errors.InvalidOption, errors.SubjectError),
                              (310, errors.UnknownDelivery, errors.SubjectError),
                              (311, errors.UnknownStream, errors.SubjectError),
                              (407, errors.TooManyConsumers, errors.LimitError),
                              (504, errors.NotStored, errors.RequestError)):
        e = errors.error_for(code, "x", ref_op=3, ref_id=1)
        assert type(e) is cls and isinstance(e, family) and e.code == code and not e.fatal
