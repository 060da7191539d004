#pragma once
// The reply subjects one connection may publish to (docs/protocol.md section 12.3). A MSG that carries
// a reply subject grants exactly one PUB to it: the tenant's own subjects are shown as they are, a
// gateway request inbox (`_INBOX.…`) as it is, and any other bus subject behind an opaque
// `_INBOX.gw.<n>` alias. Bounded: past `max` grants the oldest expire. Not thread-safe.

#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <unordered_map>

namespace busgate::gw {

class ReplyGrants {
 public:
  explicit ReplyGrants(size_t max = 4096) : max_(max) {}
  // The reply subject the client sees for `bus_reply` ("" for none), granting it when it is an
  // `_INBOX.` subject. `own_prefix` is the tenant's namespace on the bus.
  std::string map(std::string_view bus_reply, std::string_view own_prefix);
  // The bus subject a PUB to `visible` goes to, and the grant used up; "" when it was not granted.
  std::string take(std::string_view visible);
  size_t size() const { return grants_.size(); }
  void clear();

 private:
  size_t max_;
  std::unordered_map<std::string, std::string> grants_;  // visible reply subject → bus subject
  std::deque<std::string> order_;
  uint64_t seq_ = 0;
};

}  // namespace busgate::gw
