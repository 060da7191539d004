#pragma once
// The reply subjects one connection may publish to (docs/protocol.md section 12.3). A MSG that carries
// a reply subject grants exactly one PUB to it. What the client sees:
// - the tenant's own subjects, with the namespace stripped (no grant: publish permissions apply);
// - a request inbox on the bus (`_INBOX.<id>.<token>`, three tokens) as it is, granted;
// - anything else (another namespace, or an own subject that would read as `_INBOX.`) behind a
//   random alias `_INBOX.~<22 characters>`, granted. No node id holds `~`, so an alias never equals a
//   request inbox or any subject shown as it is.
// Grants are bounded per origin tenant (the message's busgate-tenant header): past `max` grants from
// one tenant, that tenant's oldest expire; another tenant's traffic never evicts them. Not thread-safe.

#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <unordered_map>

namespace busgate::gw {

class ReplyGrants {
 public:
  explicit ReplyGrants(size_t max_per_origin = 4096, size_t max_origins = 64)
      : max_(max_per_origin), max_origins_(max_origins) {}
  // The reply subject the client sees for `bus_reply` ("" for none), granting it when it is an
  // `_INBOX.` subject. `own_prefix` is the tenant's namespace on the bus; `origin` the tenant the
  // message came from ("" when unknown).
  std::string map(std::string_view bus_reply, std::string_view own_prefix, std::string_view origin = {});
  // The bus subject a PUB to `visible` goes to, and the grant used up; "" when it was not granted.
  std::string take(std::string_view visible);
  size_t size() const { return grants_.size(); }
  void clear();

 private:
  std::string alias();
  struct Origin {
    std::deque<std::string> order;  // visible names, oldest first (taken ones expire harmlessly)
    size_t live = 0;                // grants of this origin still in grants_
  };
  struct Grant {
    std::string bus;
    Origin* origin;
  };
  size_t max_;
  size_t max_origins_;
  std::unordered_map<std::string, Grant> grants_;  // visible reply subject → bus subject
  std::unordered_map<std::string, Origin> origins_;
};

// The value of header `key` in a msgpack-encoded headers map ("" when absent or unreadable).
std::string_view packed_header(std::string_view packed, std::string_view key);

}  // namespace busgate::gw
