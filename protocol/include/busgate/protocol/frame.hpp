#pragma once
// Frame model of busgate wire protocol v1 (docs/protocol.md). Decoded frames reference the bytes of
// the body they were decoded from: they are views, valid while that buffer is.

#include <cstdint>
#include <optional>
#include <string_view>
#include <variant>
#include <vector>

#include "busgate/protocol/msgpack.hpp"

namespace busgate::proto {

enum class Op : uint8_t {
  hello = 1,
  welcome = 2,
  pub = 3,
  sub = 4,
  unsub = 5,
  msg = 6,
  req = 7,
  res = 8,
  ok = 9,
  err = 10,
  ping = 11,
  pong = 12,
  goaway = 13,
  ack = 14,
  nak = 15,
  credit = 16,
  progress = 17,
  term = 18,
};
inline constexpr uint64_t kMaxOp = 18;
std::string_view op_name(uint64_t op);  // "PUB"; "?" for unknown codes

enum class Origin { client, gateway };
// Which side may send an op.
bool op_allowed_from(uint64_t op, Origin from);

inline constexpr uint32_t kProtocolVersion = 1;
inline constexpr size_t kPreHandshakeMaxFrame = 65535;
inline constexpr size_t kDefaultMaxPayload = 1048576;
inline constexpr size_t kDefaultMaxFrame = kDefaultMaxPayload + 65536;

struct Header {
  std::string_view key;
  std::string_view value;
  bool operator==(const Header&) const = default;
};
using Headers = std::vector<Header>;  // empty = no headers

struct Hello {
  std::vector<uint64_t> versions;
  mp::Value auth;  // map: {"method": "token", "token": "..."}
  std::optional<std::string_view> name;
  mp::Value opts;  // nil or map
};
struct Welcome {
  uint64_t version = kProtocolVersion;
  std::string_view session_id;
  std::string_view node_id;
  std::string_view tenant;
  mp::Value limits;  // map
};
struct Pub {
  std::string_view subject;
  std::string_view payload;
  Headers headers;
  std::optional<std::string_view> reply_to;
  uint32_t ack = 0;
  std::optional<std::string_view> msg_id;  // idempotency key (section 16.5)
};
struct Sub {
  uint32_t sid = 0;
  std::string_view subject;
  std::optional<std::string_view> queue;
  mp::Value opts;  // nil or map
};
struct Unsub {
  uint32_t sid = 0;
  uint64_t max_msgs = 0;
};
struct Msg {
  uint32_t sid = 0;
  std::string_view subject;
  std::string_view payload;
  Headers headers;
  std::optional<std::string_view> reply_to;
  uint64_t delivery_id = 0;
  uint64_t attempt = 0;
};
struct Req {
  uint32_t req_id = 0;
  std::string_view subject;
  std::string_view payload;
  Headers headers;
  uint64_t timeout_ms = 0;
};
struct Res {
  uint32_t req_id = 0;
  uint64_t status = 0;  // 0 or an error code
  std::string_view payload;
  Headers headers;
};
struct Ok {
  uint64_t ref_op = 0;
  uint64_t ref_id = 0;
};
struct Err {
  uint64_t code = 0;
  std::string_view message;
  uint64_t ref_op = 0;
  uint64_t ref_id = 0;
};
struct Ping {};
struct Pong {};
struct Goaway {
  uint64_t delay_ms = 0;
  std::string_view reason;
  std::vector<std::string_view> servers;
};
struct Ack {
  uint32_t sid = 0;
  uint64_t delivery_id = 0;
};
struct Nak {
  uint32_t sid = 0;
  uint64_t delivery_id = 0;
  uint64_t delay_ms = 0;
};
struct Credit {
  uint32_t sid = 0;
  uint64_t credits = 0;
};
struct Progress {
  uint32_t sid = 0;
  uint64_t delivery_id = 0;
};
struct Term {
  uint32_t sid = 0;
  uint64_t delivery_id = 0;
  std::optional<std::string_view> reason;
};

// Alternative index + 1 == op code.
using Frame = std::variant<Hello, Welcome, Pub, Sub, Unsub, Msg, Req, Res, Ok, Err, Ping, Pong, Goaway, Ack,
                           Nak, Credit, Progress, Term>;

inline Op frame_op(const Frame& f) { return static_cast<Op>(f.index() + 1); }

}  // namespace busgate::proto
