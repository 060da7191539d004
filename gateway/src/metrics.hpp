#pragma once
// Counters for /metrics. Process-wide ones live in Metrics; those labelled by tenant live in a
// TenantMetrics each tenant's TenantState holds (sessions reach it through the tenant they hold, so
// counting costs one relaxed atomic add, no lock and no lookup). Errors sent before a connection
// authenticated count in Metrics::unauthenticated (rendered with tenant="").

#include <array>
#include <atomic>
#include <cstdint>
#include <vector>

#include "busgate/protocol/errors.hpp"

namespace busgate::gw {

// Request latency bucket upper bounds in microseconds: 50 µs up to max_request_ms (the top finite
// bucket is max_request_ms itself when the ladder does not hold it), at most kMaxLatencyBuckets.
inline constexpr size_t kMaxLatencyBuckets = 24;
inline std::vector<uint64_t> latency_bounds_us(uint64_t max_request_ms) {
  static constexpr uint64_t kLadder[] = {50,      100,     250,     500,     1000,     2500,     5000,
                                         10000,   25000,   50000,   100000,  250000,   500000,   1000000,
                                         2500000, 5000000, 10000000, 30000000, 60000000, 120000000, 300000000};
  const uint64_t max_us = max_request_ms * 1000;
  std::vector<uint64_t> out;
  for (const uint64_t b : kLadder) {
    if (b >= max_us) break;
    out.push_back(b);
  }
  if (max_us > 0 && out.size() < kMaxLatencyBuckets) out.push_back(max_us);
  return out;
}

struct TenantMetrics {
  std::atomic<uint64_t> requests_total{0};
  std::atomic<uint64_t> slow_consumer_disconnects{0};
  // REQ to reply (or an error answer from the bus): one bucket per bound, then +Inf.
  std::array<std::atomic<uint64_t>, kMaxLatencyBuckets + 1> latency_buckets{};
  std::atomic<uint64_t> latency_sum_us{0};
  std::atomic<uint64_t> latency_count{0};
  // Errors sent, indexed by code number (codes are < 700).
  std::array<std::atomic<uint64_t>, 700> errors{};

  void count_error(proto::Code c) {
    const auto n = static_cast<size_t>(c);
    if (n < errors.size()) errors[n].fetch_add(1, std::memory_order_relaxed);
  }
  void observe_latency_us(const std::vector<uint64_t>& bounds, uint64_t us) {
    size_t i = 0;
    while (i < bounds.size() && us > bounds[i]) ++i;
    latency_buckets[i].fetch_add(1, std::memory_order_relaxed);
    latency_sum_us.fetch_add(us, std::memory_order_relaxed);
    latency_count.fetch_add(1, std::memory_order_relaxed);
  }
};

struct Metrics {
  std::atomic<uint64_t> connections_opened{0};
  std::atomic<uint64_t> connections_closed{0};
  // Flow control: producers paced for a consumer past half its bound (waits, and publishing
  // connections paused), and publishing connections paused because the bus was congested.
  std::atomic<uint64_t> producer_paces{0};
  std::atomic<uint64_t> backlog_drops{0};  // messages dropped at twice a tenant's max_backlog_bytes
  // Connections closed, and backlog entries dropped, because a tenant's or the node's queued-bytes
  // budget was full (limits.max_tenant_queued_bytes, limits.max_queued_bytes).
  std::atomic<uint64_t> budget_disconnects{0};
  std::atomic<uint64_t> budget_drops{0};
  // Failed HELLOs, and HELLOs refused unread because their address failed too often.
  std::atomic<uint64_t> auth_failures{0};
  std::atomic<uint64_t> auth_throttled{0};
  // HELLOs refused because an operator closed a matching connection with refuse_for_ms.
  std::atomic<uint64_t> admin_refused{0};
  std::atomic<uint64_t> bus_congestion_pauses{0};
  std::atomic<uint64_t> foreign_protocol_rejects{0};
  std::atomic<uint64_t> bus_messages_dropped{0};  // from the bus, not deliverable as the spec requires
  // Set once at start from timeouts.max_request_ms, before any connection exists.
  std::vector<uint64_t> latency_bounds_us;
  // Errors sent on connections that had not authenticated (tenant="").
  TenantMetrics unauthenticated;
};

}  // namespace busgate::gw
