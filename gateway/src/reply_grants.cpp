#include "reply_grants.hpp"

#include "busgate/protocol/msgpack.hpp"
#include "bus.hpp"

namespace busgate::gw {

namespace {
constexpr std::string_view kInbox = "_INBOX.";

// `_INBOX.<node>.js.…`: where a gateway node waits for the store confirmations of JetStream
// publishes. Core subscribers of a stream subject see it as the reply subject of a stored publish;
// it is the bus's, never the publisher's, so it is not shown (docs/protocol.md section 16.5).
bool is_store_confirmation_inbox(std::string_view reply) {
  if (!reply.starts_with(kInbox)) return false;
  const auto node_end = reply.find('.', kInbox.size());
  return node_end != std::string_view::npos && reply.substr(node_end).starts_with(".js.");
}

// A request inbox shown as it is: `_INBOX.<id>.<token>`, exactly three tokens, no `~` in the id.
bool is_plain_inbox(std::string_view reply) {
  if (!reply.starts_with(kInbox)) return false;
  const auto rest = reply.substr(kInbox.size());
  const auto dot = rest.find('.');
  if (dot == 0 || dot == std::string_view::npos || dot + 1 == rest.size()) return false;
  if (rest.substr(0, dot).find('~') != std::string_view::npos) return false;
  return rest.find('.', dot + 1) == std::string_view::npos;
}
}  // namespace

std::string ReplyGrants::alias() {
  // 22 base-62 characters from two 64-bit draws of the CSPRNG (the request inboxes' source): an
  // alias seen by a client tells nothing about the next one.
  std::string s = "_INBOX.~";
  append_inbox_token(s, random_token());
  append_inbox_token(s, random_token());
  return s;
}

std::string ReplyGrants::map(std::string_view bus_reply, std::string_view own_prefix, std::string_view origin) {
  if (bus_reply.empty() || is_store_confirmation_inbox(bus_reply)) return {};
  std::string visible;
  if (!own_prefix.empty() && bus_reply.starts_with(own_prefix) &&
      !bus_reply.substr(own_prefix.size()).starts_with(kInbox))
    return std::string(bus_reply.substr(own_prefix.size()));  // the tenant's own subject: no grant
  if (is_plain_inbox(bus_reply)) {
    visible = bus_reply;  // a request inbox
    if (auto it = grants_.find(visible); it != grants_.end()) return visible;  // already granted
  } else {
    do visible = alias();
    while (grants_.count(visible));
  }
  auto oit = origins_.find(std::string(origin));
  if (oit == origins_.end()) {
    // A header on the bus can name anything: past max_origins, unknown origins share one bound.
    oit = origins_.size() < max_origins_ ? origins_.emplace(std::string(origin), Origin{}).first
                                         : origins_.try_emplace(std::string{}).first;
  }
  Origin& o = oit->second;
  grants_.emplace(visible, Grant{std::string(bus_reply), &o});
  o.order.push_back(visible);
  ++o.live;
  while (o.live > max_ && !o.order.empty()) {
    auto git = grants_.find(o.order.front());
    if (git != grants_.end() && git->second.origin == &o) {
      grants_.erase(git);
      --o.live;
    }
    o.order.pop_front();
  }
  // Names already taken leave stale entries behind: keep the list from growing past twice the bound.
  if (o.order.size() > 2 * max_ + 16) {
    std::deque<std::string> kept;
    for (auto& v : o.order)
      if (auto git = grants_.find(v); git != grants_.end() && git->second.origin == &o) kept.push_back(std::move(v));
    o.order.swap(kept);
  }
  return visible;
}

std::string ReplyGrants::take(std::string_view visible) {
  auto it = grants_.find(std::string(visible));
  if (it == grants_.end()) return {};
  std::string bus = std::move(it->second.bus);
  --it->second.origin->live;
  grants_.erase(it);  // its entry in the origin's order expires harmlessly later
  return bus;
}

void ReplyGrants::clear() {
  grants_.clear();
  origins_.clear();
}

std::string_view packed_header(std::string_view packed, std::string_view key) {
  if (packed.empty()) return {};
  proto::mp::Reader rd(packed);
  uint32_t n = 0;
  if (!rd.read_map(n)) return {};
  for (uint32_t i = 0; i < n; ++i) {
    std::string_view k, v;
    if (!rd.read_str(k) || !rd.read_str(v)) return {};
    if (k == key) return v;
  }
  return {};
}

}  // namespace busgate::gw
