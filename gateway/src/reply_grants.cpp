#include "reply_grants.hpp"

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
}  // namespace

std::string ReplyGrants::map(std::string_view bus_reply, std::string_view own_prefix) {
  if (bus_reply.empty() || is_store_confirmation_inbox(bus_reply)) return {};
  std::string visible;
  if (bus_reply.starts_with(own_prefix)) visible = bus_reply.substr(own_prefix.size());  // the tenant's own
  else if (bus_reply.starts_with(kInbox)) visible = bus_reply;                           // a gateway request inbox
  else visible = "_INBOX.gw." + std::to_string(++seq_);                                   // opaque alias
  if (!visible.starts_with(kInbox)) return visible;
  if (grants_.emplace(visible, bus_reply).second) {
    order_.push_back(visible);
    if (order_.size() > max_) {
      grants_.erase(order_.front());
      order_.pop_front();
    }
  }
  return visible;
}

std::string ReplyGrants::take(std::string_view visible) {
  auto it = grants_.find(std::string(visible));
  if (it == grants_.end()) return {};
  std::string bus = std::move(it->second);
  grants_.erase(it);  // its entry in order_ expires harmlessly later
  return bus;
}

void ReplyGrants::clear() {
  grants_.clear();
  order_.clear();
}

}  // namespace busgate::gw
