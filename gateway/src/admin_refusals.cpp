#include "admin_refusals.hpp"

#include <algorithm>

namespace busgate::gw {

const char* by_name(Refusal::By by) {
  switch (by) {
    case Refusal::By::address: return "address";
    case Refusal::By::token: return "token";
    default: return "name";
  }
}

std::optional<Refusal::By> parse_by(std::string_view text) {
  if (text == "name") return Refusal::By::name;
  if (text == "address") return Refusal::By::address;
  if (text == "token") return Refusal::By::token;
  return std::nullopt;
}

std::string RefusalList::next_id() { return node_id_ + "." + std::to_string(next_.fetch_add(1)); }

void RefusalList::add(Refusal r) {
  std::lock_guard lk(mu_);
  prune_locked(std::chrono::steady_clock::now());
  std::erase_if(list_, [&](const Refusal& x) { return x.id == r.id; });
  list_.push_back(std::move(r));
  count_.store(list_.size(), std::memory_order_relaxed);
}

bool RefusalList::remove(std::string_view id) {
  std::lock_guard lk(mu_);
  const size_t n = std::erase_if(list_, [&](const Refusal& x) { return x.id == id; });
  count_.store(list_.size(), std::memory_order_relaxed);
  return n > 0;
}

std::optional<Refusal> RefusalList::match(std::string_view tenant, std::string_view name, std::string_view address,
                                          std::string_view token_digest, std::chrono::steady_clock::time_point now) {
  if (count_.load(std::memory_order_relaxed) == 0) return std::nullopt;
  std::lock_guard lk(mu_);
  prune_locked(now);
  for (const auto& r : list_) {
    const bool hit = r.by == Refusal::By::address ? r.value == address
                     : r.by == Refusal::By::name  ? r.tenant == tenant && !name.empty() && r.value == name
                                                  : r.tenant == tenant && r.value == token_digest;
    if (hit) return r;
  }
  return std::nullopt;
}

std::vector<Refusal> RefusalList::live(std::chrono::steady_clock::time_point now) {
  std::lock_guard lk(mu_);
  prune_locked(now);
  return list_;
}

void RefusalList::prune_locked(std::chrono::steady_clock::time_point now) {
  std::erase_if(list_, [&](const Refusal& x) { return x.until <= now; });
  count_.store(list_.size(), std::memory_order_relaxed);
}

}  // namespace busgate::gw
