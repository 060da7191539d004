"""python -m conformance.vectors_check: run the runner's own codec through conformance/vectors/.

It checks what a *client* codec must do (docs/protocol.md section 19): every gateway-origin vector is
decoded as a frame from the gateway (an invalid one must be rejected, a valid one must decode to its
`decoded` JSON mapping), and every valid vector's `decoded` must re-encode to its `hex` when canonical.
It is the runner's self-test and a small reference for codecs in other languages. Exit 1 on a mismatch."""
from __future__ import annotations

import struct
import sys

from . import codec
from .vectors import load_vectors


def decode_gateway(hexs: str, max_frame: int) -> list:
    data = bytes.fromhex(hexs)
    (n,) = struct.unpack(">I", data[:4])
    if n == 0:
        raise codec.DecodeError("MALFORMED_FRAME")
    if n > max_frame:
        raise codec.DecodeError("FRAME_TOO_LARGE")
    f = codec.check_gateway_frame(codec.decode_body(data[4:4 + n]))
    if f[0] not in codec.OP_NAMES:
        raise codec.DecodeError("UNKNOWN_OP")
    return f


def main() -> int:
    bad = checked = 0
    for v in load_vectors():
        mf = v.get("max_frame", codec.DEFAULT_MAX_FRAME)
        if v["valid"] and v.get("canonical", True):
            checked += 1
            enc = codec.encode_frame(codec.from_view(v["decoded"]))
            if enc.hex() != v["hex"]:
                bad += 1
                print(f"{v['id']}: canonical encoding differs: {enc.hex()}")
        if v["from"] != "gateway":
            continue
        checked += 1
        try:
            f = decode_gateway(v["hex"], mf)
        except codec.DecodeError as e:
            if v["valid"]:
                bad += 1
                print(f"{v['id']}: valid vector rejected: {e}")
            continue
        if not v["valid"]:
            bad += 1
            print(f"{v['id']}: invalid vector ({v['error']}) accepted: {f!r}")
        elif codec.view(codec.normalize(f)) != v["decoded"]:
            bad += 1
            print(f"{v['id']}: decoded {codec.view(codec.normalize(f))} != {v['decoded']}")
    print(f"vectors_check: {checked} checks, {bad} mismatches")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
