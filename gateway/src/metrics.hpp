#pragma once
// Process-wide counters. Per-tenant counters live in TenantState.

#include <array>
#include <atomic>
#include <cstdint>

#include "busgate/protocol/errors.hpp"

namespace busgate::gw {

struct Metrics {
  std::atomic<uint64_t> connections_opened{0};
  std::atomic<uint64_t> connections_closed{0};
  std::atomic<uint64_t> slow_consumer_disconnects{0};
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
  std::atomic<uint64_t> bus_congestion_pauses{0};
  std::atomic<uint64_t> foreign_protocol_rejects{0};
  std::atomic<uint64_t> bus_messages_dropped{0};  // from the bus, not deliverable as the spec requires
  std::atomic<uint64_t> requests_total{0};
  std::atomic<uint64_t> requests_inflight{0};
  // Request latency histogram (gateway REQ in → RES out), bucket upper bounds in microseconds.
  static constexpr std::array<uint64_t, 14> kLatencyBucketsUs{50,    100,   250,    500,    1000,   2500,   5000,
                                                              10000, 25000, 50000, 100000, 250000, 1000000, 5000000};
  std::array<std::atomic<uint64_t>, kLatencyBucketsUs.size() + 1> latency_buckets{};
  std::atomic<uint64_t> latency_sum_us{0};
  std::atomic<uint64_t> latency_count{0};
  // Errors sent, indexed by code number (codes are < 700).
  std::array<std::atomic<uint64_t>, 700> errors{};

  void count_error(proto::Code c) {
    const auto n = static_cast<size_t>(c);
    if (n < errors.size()) errors[n].fetch_add(1, std::memory_order_relaxed);
  }
  void observe_latency_us(uint64_t us) {
    size_t i = 0;
    while (i < kLatencyBucketsUs.size() && us > kLatencyBucketsUs[i]) ++i;
    latency_buckets[i].fetch_add(1, std::memory_order_relaxed);
    latency_sum_us.fetch_add(us, std::memory_order_relaxed);
    latency_count.fetch_add(1, std::memory_order_relaxed);
  }
};

}  // namespace busgate::gw
