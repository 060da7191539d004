#pragma once
// A subscription of a Session: shared by session.cpp (plain subscriptions) and session_durable.cpp
// (durable ones, docs/protocol.md section 16).

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "durable.hpp"
#include "session.hpp"
#include "tenancy.hpp"

namespace busgate::gw {

struct Session::SubState {
  uint32_t sid = 0;
  uint64_t bus_id = 0;
  std::string subject;  // as the client gave it
  std::string queue;
  Mapping mapping;
  std::string own_prefix;                 // the tenant's namespace, for mapping reply subjects back
  bool filter = false;                    // apply the tenant's subscribe deny list per message
  std::vector<std::string> deny;          // copied at subscribe time when filter is set
  std::atomic<bool> live{true};
  std::atomic<uint64_t> remaining{0};     // UNSUB max_msgs countdown; 0 = unlimited
  bool confirmed = false;                 // OK sent (executor only)
  // Durable subscriptions (section 16): set once the bus has confirmed it (executor only).
  bool is_durable = false;
  bool credit_mode = false;
  std::shared_ptr<DurableSubscription> durable;
};

}  // namespace busgate::gw
