#pragma once
// Budgets for the bytes a node holds for its clients (docs/protocol.md section 15): outbound queues
// of connections and delivery-lane backlogs, per tenant (limits.max_tenant_queued_bytes) and for the
// whole node (limits.max_queued_bytes). A connection or lane reports what it holds through a
// BudgetShare; a delivery checks fits() before it queues. Thread-safe (relaxed atomics).

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace busgate::gw {

class ByteBudget {
 public:
  explicit ByteBudget(uint64_t max) : max_(max) {}
  bool fits(uint64_t extra) const {
    const int64_t used = used_.load(std::memory_order_relaxed);
    return used < 0 || static_cast<uint64_t>(used) + extra <= max_;
  }
  void add(int64_t delta) { used_.fetch_add(delta, std::memory_order_relaxed); }
  uint64_t used() const {
    const int64_t u = used_.load(std::memory_order_relaxed);
    return u < 0 ? 0 : static_cast<uint64_t>(u);
  }
  uint64_t max() const { return max_; }

 private:
  std::atomic<int64_t> used_{0};
  uint64_t max_;
};

// One holder's part of a tenant's and the node's budgets. Reports are coarse (every 64 KiB of change,
// and when the holder empties), so the shared counters are not touched per message. Not thread-safe:
// its holder's lock guards it.
class BudgetShare {
 public:
  BudgetShare() = default;
  BudgetShare(const BudgetShare&) = delete;
  BudgetShare& operator=(const BudgetShare&) = delete;
  ~BudgetShare() { report(0, true); }

  void attach(ByteBudget* tenant, ByteBudget* node) {
    report(0, true);
    tenant_ = tenant;
    node_ = node;
  }
  // The holder holds `bytes` now.
  void report(size_t bytes, bool exact = false) {
    const int64_t delta = static_cast<int64_t>(bytes) - static_cast<int64_t>(reported_);
    if (delta == 0) return;
    if (!exact && bytes != 0 && delta < kStep && delta > -kStep) return;
    if (tenant_) tenant_->add(delta);
    if (node_) node_->add(delta);
    reported_ = bytes;
  }
  // Which budget `extra` more bytes would overrun: nullptr when both have room.
  const char* overrun(size_t extra) const {
    if (tenant_ && !tenant_->fits(extra)) return "max_tenant_queued_bytes";
    if (node_ && !node_->fits(extra)) return "max_queued_bytes";
    return nullptr;
  }

 private:
  static constexpr int64_t kStep = 64 * 1024;
  ByteBudget* tenant_ = nullptr;
  ByteBudget* node_ = nullptr;
  size_t reported_ = 0;
};

}  // namespace busgate::gw
