#pragma once
// Incremental TCP frame parser and first-bytes protocol sniffing. No I/O: the caller reads into
// prepare()'s buffer, commit()s, then calls next() until it needs more.

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "busgate/protocol/errors.hpp"

namespace busgate::proto {

class FrameParser {
 public:
  enum class Status { need_more, frame, error };

  explicit FrameParser(size_t max_frame) : max_frame_(max_frame) {}

  void set_max_frame(size_t max_frame) { max_frame_ = max_frame; }
  size_t max_frame() const { return max_frame_; }

  // A writable area of at least `n` bytes for the next read. Invalidates bodies returned earlier.
  char* prepare(size_t n);
  void commit(size_t n) { wpos_ += n; }
  // Convenience for tests and fuzzers: copies bytes in.
  void feed(std::string_view bytes);

  // Yields the next whole frame body. The length is checked against max_frame before any byte of
  // the body is buffered beyond what the caller already read, so an oversized length never causes
  // an allocation. After an error the parser stays in the error state.
  Status next(std::string_view& body);
  Code error() const { return error_; }
  size_t buffered() const { return wpos_ - rpos_; }
  // The bytes received and not yet returned as frames (for sniffing the first bytes).
  std::string_view peek() const { return {buf_.data() + rpos_, wpos_ - rpos_}; }
  size_t capacity() const { return buf_.size(); }

 private:
  std::vector<char> buf_;
  size_t rpos_ = 0;
  size_t wpos_ = 0;
  size_t max_frame_;
  Code error_ = Code::ok;
};

// What the first bytes a peer sent on a busgate TCP port look like.
enum class Sniff {
  need_more,  // not enough bytes to tell
  busgate,    // a frame length that fits the pre-handshake maximum
  tls,        // a TLS handshake record (a TLS client on a plain port)
  http,       // an HTTP request line: G, P, H, O, D or C followed by a letter
  foreign,    // anything else
};
Sniff sniff(std::string_view first_bytes);

// Fixed answers to foreign peers (docs/protocol.md "Protocol detection").
std::string_view tls_alert_reply();  // fatal handshake_failure alert record
std::string_view http_reply();       // HTTP/1.1 400 with Connection: close

}  // namespace busgate::proto
