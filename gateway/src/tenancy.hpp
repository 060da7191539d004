#pragma once
// Tenants at run time: authentication, permissions, subject mapping into the tenant's bus namespace,
// and the shared per-tenant limits (connections, in-flight requests, publish rate).

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "config.hpp"
#include "delivery_lane.hpp"
#include "metrics.hpp"
#include "queue_budget.hpp"

namespace busgate::gw {

// Pattern relations over the subject grammar.
bool pattern_covers(std::string_view outer, std::string_view inner);  // every subject of inner matches outer
bool patterns_overlap(std::string_view a, std::string_view b);        // some subject matches both

struct RuleCheck {
  bool allowed = false;
  bool needs_filter = false;  // a wildcard subscription that overlaps a deny pattern
};
// Literal subjects (publish, request).
bool subject_allowed(const PatternRules& rules, std::string_view subject);
// Subscription patterns: allowed when an allow pattern covers it and no deny pattern covers it.
RuleCheck subscription_allowed(const PatternRules& rules, std::string_view pattern);

// How a client subject maps to the bus for one subscription or publish.
struct Mapping {
  std::string bus_subject;
  std::string client_prefix;  // strip bus_prefix and prepend client_prefix to map a bus subject back
  std::string bus_prefix;
  bool operator==(const Mapping&) const = default;
};
// PUB and REQ: service imports first, then the tenant namespace.
Mapping map_outbound(const TenantConfig& t, std::string_view subject);
// The same, writing only the bus subject into `out` (the publish hot path: no allocation once `out`
// has grown).
void map_outbound_subject(const TenantConfig& t, std::string_view subject, std::string& out);
// SUB: stream imports first, then the tenant namespace.
Mapping map_subscription(const TenantConfig& t, std::string_view pattern);
// Bus subject → the client's view, using the mapping its subscription was made with. nullopt when the
// subject is outside that mapping.
std::optional<std::string> map_back(const Mapping& m, std::string_view bus_subject);

class TokenBucket {
 public:
  void configure(double rate_per_sec);  // 0 = unlimited; burst = one second of rate
  bool take(double n, std::chrono::steady_clock::time_point now);

 private:
  double rate_ = 0;
  double tokens_ = 0;
  std::chrono::steady_clock::time_point last_{};
};

// Per-tenant state that lives across configuration reloads.
class TenantState {
 public:
  explicit TenantState(std::string name) : name_(std::move(name)) {}
  const std::string& name() const { return name_; }

  std::shared_ptr<const TenantConfig> config() const {
    std::lock_guard lk(mu_);
    return config_;
  }
  void set_config(std::shared_ptr<const TenantConfig> c);
  bool removed() const { return removed_.load(); }
  void mark_removed() { removed_ = true; }
  // Bumped on every reload, so sessions can refresh a cached config cheaply.
  uint64_t generation() const { return generation_.load(std::memory_order_acquire); }

  bool try_acquire_connection();
  void release_connection() { connections_.fetch_sub(1); }
  bool try_acquire_request();
  void release_request() { inflight_.fetch_sub(1); }
  // Both buckets must have room; nothing is taken from either otherwise.
  bool try_publish(size_t bytes) {
    if (unlimited_publish_.load(std::memory_order_relaxed)) return true;
    return try_publish_limited(bytes);
  }

  // The bytes held for this tenant's clients on this node (queue_budget.hpp), created on first use
  // with this bound.
  ByteBudget& queued_budget(uint64_t max_bytes);
  // The tenant's delivery lane (delivery_lane.hpp), created on first use with this backlog bound; its
  // backlog counts toward the tenant's budget and `node`.
  std::shared_ptr<DeliveryLane> lane(size_t max_backlog_bytes, uint64_t max_tenant_queued, ByteBudget* node,
                                     std::atomic<uint64_t>* budget_drops);

  int connections() const { return connections_.load(); }
  int inflight() const { return inflight_.load(); }

  // Bytes held for this tenant's clients on this node now (0 before the first connection).
  uint64_t queued_bytes() const;

  // Counters for metrics and the admin API.
  std::atomic<uint64_t> msgs_in{0}, bytes_in{0}, msgs_out{0}, bytes_out{0};
  TenantMetrics metrics;

 private:
  std::string name_;
  mutable std::mutex mu_;
  std::shared_ptr<const TenantConfig> config_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> removed_{false};
  std::atomic<int> connections_{0};
  std::atomic<int> inflight_{0};
  bool try_publish_limited(size_t bytes);
  std::mutex bucket_mu_;
  TokenBucket msg_bucket_, byte_bucket_;
  std::atomic<bool> unlimited_publish_{true};
  std::unique_ptr<ByteBudget> queued_;  // under mu_; declared before the lane, which reports into it
  std::shared_ptr<DeliveryLane> lane_;  // under mu_
};

class TenantRegistry {
 public:
  // Creates or updates tenants; tenants no longer configured are marked removed.
  void load(const std::vector<TenantConfig>& tenants);
  struct AuthResult {
    std::shared_ptr<TenantState> tenant;
    std::string digest;
  };
  // Hashes the token and compares it with every configured digest in constant time.
  std::optional<AuthResult> authenticate(std::string_view token) const;
  // After a reload: is this digest still a credential of this tenant?
  bool still_valid(const TenantState& t, const std::string& digest) const;
  std::vector<std::shared_ptr<TenantState>> all() const;

 private:
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<TenantState>> tenants_;
};

}  // namespace busgate::gw
