#pragma once
// Encoding (appends to a caller's buffer) and decoding (zero-copy views) of busgate frames.

#include <string>
#include <string_view>

#include "busgate/protocol/errors.hpp"
#include "busgate/protocol/frame.hpp"

namespace busgate::proto {

struct DecodeResult {
  Code code = Code::ok;
  uint64_t op = 0;        // the op code, when the body got that far (for ERR ref_op)
  bool has_frame = false; // the frame's fields were decoded (validation may still have failed)
  std::string detail;     // human-readable reason when code != ok

  bool ok() const { return code == Code::ok; }
};

// Decodes one frame body. Structural problems give MALFORMED_FRAME / UNKNOWN_OP / UNEXPECTED_OP with
// has_frame false. A frame that is well-formed but breaks a rule for frames from `from` (subject or
// header grammar, reserved subjects or headers, wildcards where not allowed) has has_frame true and the
// rule's code, so the receiver can still tell which sid / req_id / ack it concerns.
DecodeResult decode(std::string_view body, Origin from, Frame& out);

// Appends the msgpack body of a frame.
void encode(const Frame& frame, std::string& out);
// Appends a TCP frame: 4-byte big-endian length, then the body.
void encode_framed(const Frame& frame, std::string& out);

// Reserves 4 bytes for a length prefix; returns its offset. finish_frame() writes the length.
size_t begin_frame(std::string& out);
void finish_frame(std::string& out, size_t start);

// Fast paths for the gateway's outbound hot path. `headers_msgpack` is an already encoded msgpack
// map (empty for none).
void encode_msg_framed(std::string& out, uint32_t sid, std::string_view subject, std::string_view payload,
                       std::string_view headers_msgpack, std::string_view reply_to, uint64_t delivery_id = 0,
                       uint64_t attempt = 0);
void encode_res_framed(std::string& out, uint32_t req_id, uint64_t status, std::string_view payload,
                       std::string_view headers_msgpack);
void encode_err_framed(std::string& out, Code code, std::string_view message, uint64_t ref_op = 0,
                       uint64_t ref_id = 0);
void encode_ok_framed(std::string& out, uint64_t ref_op, uint64_t ref_id);

// Encodes headers as a msgpack map (nothing for an empty list).
void encode_headers(std::string& out, const Headers& headers);

}  // namespace busgate::proto
