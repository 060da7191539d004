#pragma once
// The NATS client protocol as the server speaks it, parsed from a byte buffer: no I/O, no threads,
// no allocation for MSG, HMSG, PING and PONG. The caller keeps the bytes; the parser looks at the
// start of what it is given and says what is there:
//   item       one complete protocol message (INFO, MSG, HMSG, PING, PONG, +OK, -ERR), as views
//              into the buffer, and how many bytes it occupies;
//   need_more  an incomplete message, and, once known, how many bytes it needs in all;
//   error      a protocol violation, with a message naming it. The connection cannot be trusted
//              past it.
// Every input is bounded: control lines have a maximum length (4 KiB for MSG/HMSG and the short
// ops, 64 KiB for INFO and -ERR), message sizes are plain decimal numbers that are never allowed
// to overflow and never above the server's max_payload (64 MiB before the server announced one),
// the header size is at most the total size, and the CRLF after a payload is checked. Operation
// names are matched whole and without regard to case. The parser never throws and never reads
// outside the buffer it is given.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace busgate::gw {

enum class NatsOp : uint8_t { info, msg, hmsg, ping, pong, ok, err };

// One parsed protocol message. The views point into the buffer given to NatsParser::next().
struct NatsItem {
  NatsOp op = NatsOp::ping;
  std::string_view text;  // INFO: the JSON object; -ERR: the server's message (as sent, quotes included)
  uint64_t sid = 0;       // MSG, HMSG
  std::string_view subject;
  std::string_view reply;    // empty for none
  std::string_view headers;  // HMSG: the raw header block ("NATS/1.0...\r\n\r\n"); MSG: empty
  std::string_view payload;
};

enum class NatsParse : uint8_t { item, need_more, error };

class NatsParser {
 public:
  static constexpr size_t kMaxMsgLine = 4u << 10;    // a MSG/HMSG (or PING, PONG, +OK) line, CRLF excluded
  static constexpr size_t kMaxLongLine = 64u << 10;  // an INFO or -ERR line, CRLF excluded
  static constexpr uint64_t kMaxPayloadCap = 64u << 20;  // before INFO, and the most a server may announce
  // An HMSG may exceed max_payload by the headers the server adds itself (JetStream sources,
  // republish), up to this much.
  static constexpr uint64_t kServerHeaderSlack = 64u << 10;

  // The server's max_payload from its INFO; zero or negative: not known (the cap applies).
  void set_max_payload(int64_t max_payload);
  // The largest MSG size (HMSG: total size) currently accepted.
  uint64_t max_msg_size(bool with_headers) const;

  // Parses the message at the start of `in`. item: `out` is filled and consumed() tells its length;
  // need_more: needed() tells the bytes the message needs in all when that is known, else 0;
  // error: error() names the problem.
  NatsParse next(std::string_view in, NatsItem& out);

  size_t consumed() const { return consumed_; }
  size_t needed() const { return needed_; }
  const std::string& error() const { return error_; }

 private:
  NatsParse fail(std::string why);
  NatsParse parse_msg(std::string_view in, std::string_view args, size_t line_len, bool hmsg, NatsItem& out);

  uint64_t max_payload_ = kMaxPayloadCap;
  size_t consumed_ = 0;
  size_t needed_ = 0;
  std::string error_;
};

}  // namespace busgate::gw
