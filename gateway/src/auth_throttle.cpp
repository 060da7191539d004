#include "auth_throttle.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <utility>
#include <vector>

namespace busgate::gw {

namespace {

// How often failed() sweeps refilled entries out even when the map is not full, so that tracked()
// follows the addresses that are really throttled.
constexpr auto kSweepEvery = std::chrono::seconds(60);

uint64_t mix(uint64_t x) {  // splitmix64 finaliser
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

}  // namespace

std::string_view address_of(std::string_view remote) {
  if (remote.starts_with('[')) {
    const auto close = remote.find(']');
    return close == std::string_view::npos ? remote.substr(1) : remote.substr(1, close - 1);
  }
  const auto last = remote.rfind(':');
  if (last == std::string_view::npos) return remote;  // no port
  // One colon: IPv4 (or a host name) and the port. More: an unbracketed IPv6 address, then the port.
  return remote.substr(0, last);
}

AuthThrottle::Key AuthThrottle::key_of(std::string_view address) {
  Key k{};
  char buf[64];
  if (address.find(':') != std::string_view::npos) {
    const std::string_view ip = address.substr(0, address.find('%'));  // no zone id
    if (ip.size() < sizeof buf) {
      std::memcpy(buf, ip.data(), ip.size());
      buf[ip.size()] = '\0';
      if (inet_pton(AF_INET6, buf, k.data()) == 1) {
        static constexpr uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (std::memcmp(k.data(), kMapped, sizeof kMapped) != 0) std::fill(k.begin() + 8, k.end(), uint8_t{0});
        return k;
      }
    }
  } else if (address.size() < sizeof buf) {
    std::memcpy(buf, address.data(), address.size());
    buf[address.size()] = '\0';
    if (inet_pton(AF_INET, buf, k.data() + 12) == 1) {
      k[10] = k[11] = 0xff;  // the IPv4-mapped form, so both spellings share a bucket
      return k;
    }
  }
  // Not an address: keyed by a hash of the text, under ff00::/64 (multicast, never a TCP peer).
  k.fill(0);
  std::fill(k.begin(), k.begin() + 8, uint8_t{0xff});
  const uint64_t h = std::hash<std::string_view>{}(address);
  std::memcpy(k.data() + 8, &h, sizeof h);
  return k;
}

size_t AuthThrottle::KeyHash::operator()(const Key& k) const noexcept {
  uint64_t a, b;
  std::memcpy(&a, k.data(), 8);
  std::memcpy(&b, k.data() + 8, 8);
  return static_cast<size_t>(mix(a ^ mix(b)));
}

AuthThrottle::AuthThrottle(uint32_t burst, double per_sec, size_t max_addresses)
    : max_addresses_(std::max<size_t>(max_addresses, 1)) {
  set_limits(burst, per_sec);
}

void AuthThrottle::set_limits(uint32_t burst, double per_sec) {
  burst_ = burst;
  per_sec_ = per_sec > 0 ? per_sec : 0;
  if (!on()) return;
  // A bucket refills completely within a year at most, so times stay well inside the clock's range.
  const double seconds = std::min(1.0 / per_sec_, 365.0 * 86400 / burst_);
  interval_ = std::max(std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds)),
                       Clock::duration(1));
  slack_ = interval_ * (burst_ - 1);
}

bool AuthThrottle::allowed(std::string_view address, Clock::time_point now) {
  if (!any_.load(std::memory_order_acquire)) return true;
  const Key k = key_of(address);
  std::lock_guard lk(mu_);
  if (!on()) return true;
  const auto it = full_at_.find(k);
  if (it == full_at_.end()) return true;
  if (it->second <= now) {  // refilled: forgotten
    full_at_.erase(it);
    any_.store(!full_at_.empty(), std::memory_order_release);
    return true;
  }
  return it->second - now <= slack_;
}

void AuthThrottle::failed(std::string_view address, Clock::time_point now) {
  const Key k = key_of(address);
  std::lock_guard lk(mu_);
  if (!on()) return;
  if (now - last_sweep_ >= kSweepEvery) sweep(now);
  auto it = full_at_.find(k);
  if (it == full_at_.end()) {
    if (full_at_.size() >= max_addresses_) make_room(now);
    full_at_.emplace(k, now + interval_);
  } else {
    it->second = std::max(it->second, now) + interval_;
  }
  any_.store(true, std::memory_order_release);
}

double AuthThrottle::retry_after_s(std::string_view address, Clock::time_point now) {
  if (!any_.load(std::memory_order_acquire)) return 0;
  const Key k = key_of(address);
  std::lock_guard lk(mu_);
  if (!on()) return 0;
  const auto it = full_at_.find(k);
  if (it == full_at_.end()) return 0;
  const auto wait = it->second - now - slack_;
  return wait > Clock::duration::zero() ? std::chrono::duration<double>(wait).count() : 0;
}

size_t AuthThrottle::tracked() const {
  std::lock_guard lk(mu_);
  return full_at_.size();
}

void AuthThrottle::reconfigure(uint32_t burst, double per_sec, Clock::time_point now) {
  std::lock_guard lk(mu_);
  const auto old_interval = interval_;
  const uint32_t old_burst = burst_;
  set_limits(burst, per_sec);
  if (!on()) {
    Map().swap(full_at_);  // forget every address and give the memory back
  } else {
    for (auto it = full_at_.begin(); it != full_at_.end();) {
      // Tokens missing under the old limits; the tokens left are kept, up to the new burst.
      const double missing = std::chrono::duration<double>(it->second - now) / old_interval;
      const double left = std::min<double>(old_burst - missing, burst_);
      const double missing_now = burst_ - left;
      if (missing_now <= 0) {
        it = full_at_.erase(it);
        continue;
      }
      it->second = now + std::chrono::duration_cast<Clock::duration>(interval_ * missing_now);
      ++it;
    }
  }
  any_.store(on() && !full_at_.empty(), std::memory_order_release);
}

void AuthThrottle::sweep(Clock::time_point now) {
  last_sweep_ = now;
  std::erase_if(full_at_, [&](const auto& kv) { return kv.second <= now; });
}

void AuthThrottle::make_room(Clock::time_point now) {
  sweep(now);
  // Leave room for a batch of new addresses, so that a flood of them costs one scan per batch.
  const size_t target = max_addresses_ >= 8 ? max_addresses_ - max_addresses_ / 8 : max_addresses_ - 1;
  if (full_at_.size() <= target) return;
  // The entries full again soonest are those closest to being forgotten anyway.
  std::vector<std::pair<Clock::time_point, Key>> order;
  order.reserve(full_at_.size());
  for (const auto& [k, t] : full_at_) order.emplace_back(t, k);
  const size_t evict = full_at_.size() - target;
  std::nth_element(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(evict - 1), order.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  for (size_t i = 0; i < evict; ++i) full_at_.erase(order[i].second);
}

}  // namespace busgate::gw
