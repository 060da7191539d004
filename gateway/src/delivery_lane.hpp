#pragma once
// A tenant's delivery lane: the order in which messages from the bus reach the tenant's connections,
// and the one place where delivery waits for a slow consumer.
//
// A bus thread (the NATS link, a memory-bus publisher) hands each message to the lane of the tenant
// it is for. While the lane is idle, the message is queued to the consumer at once, on that thread.
// When a consumer reports that its outbound queue is past its high-water mark, the lane waits for it:
// later messages for the same tenant are kept, in order, in the lane's backlog, and the bus thread
// goes on with other tenants' traffic; it never blocks. The consumer resumes the lane when it has
// written its queue down (or gave up waiting), and the backlog is delivered from its thread. The
// tenant's publishers on this node pause while the lane waits (publisher flow control), so a burst
// slows down instead of cutting a consumer off. The backlog is bounded: past `max_bytes` the lane
// stops waiting for that consumer (which gets the slow-consumer policy) and delivers the rest.

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "bus.hpp"
#include "queue_budget.hpp"

namespace busgate::gw {

class DeliveryLane;

// The consumer side of a lane (a connection).
class LaneConsumer {
 public:
  virtual ~LaneConsumer() = default;
  // Queues `msg` for the subscription `sub`. Returns true when the consumer is now past its
  // high-water mark and wants the lane to wait for it.
  virtual bool lane_deliver(const std::shared_ptr<void>& sub, const BusMessagePtr& msg) = 0;
  // The lane waits for this consumer now: it must call lane->resume(this) once it is back under its
  // mark, gives up waiting, or closes. May be called on any thread; must not block.
  virtual void lane_wait(const std::shared_ptr<DeliveryLane>& lane) = 0;
  // The backlog passed its bound while the lane waited for this consumer: apply the slow-consumer
  // policy. The lane no longer waits for it. Any thread; must not block.
  virtual void lane_overflow(size_t backlog_bytes) = 0;
};

class DeliveryLane : public std::enable_shared_from_this<DeliveryLane> {
 public:
  explicit DeliveryLane(size_t max_bytes) : max_bytes_(max_bytes) {}
  // The backlog counts toward these budgets (queue_budget.hpp): a message that would overrun one is
  // not kept (counted in `drops`). Call before the first offer().
  void set_budgets(ByteBudget* tenant, ByteBudget* node, std::atomic<uint64_t>* drops) {
    std::lock_guard lk(mu_);
    share_.attach(tenant, node);
    budget_drops_ = drops;
  }
  DeliveryLane(const DeliveryLane&) = delete;
  DeliveryLane& operator=(const DeliveryLane&) = delete;

  // Any thread. Delivers at once when the lane is idle; otherwise keeps the message behind the
  // backlog. A message offered while the backlog is at twice its bound is dropped (false).
  bool offer(const std::shared_ptr<LaneConsumer>& consumer, std::shared_ptr<void> sub, BusMessagePtr msg);

  // The consumer the lane waits for is ready (or gone): start delivering the backlog on the calling
  // thread. Returns true when `budget` entries were delivered and more remain: the caller must call
  // drain() again later (on any thread) to go on; until then nobody else delivers from the lane.
  bool resume(const LaneConsumer* consumer, size_t budget);
  bool drain(size_t budget);

  // True while the lane waits for a consumer or has a backlog: the tenant's publishers pause.
  bool busy() const {
    std::lock_guard lk(mu_);
    return busy_locked();
  }
  // Runs `fn` (on the thread that empties the lane, or at once) when the lane is idle again.
  void when_idle(std::function<void()> fn);

  size_t backlog_bytes() const {
    std::lock_guard lk(mu_);
    return backlog_bytes_;
  }
  size_t max_bytes() const { return max_bytes_; }
  uint64_t dropped() const {
    std::lock_guard lk(mu_);
    return dropped_;
  }

 private:
  struct Entry {
    std::weak_ptr<LaneConsumer> consumer;
    std::shared_ptr<void> sub;
    BusMessagePtr msg;
    size_t bytes;
  };
  bool busy_locked() const { return waiting_on_ != nullptr || draining_ || !backlog_.empty(); }
  // Delivers one entry (no lock held); true when the lane must wait for that consumer now.
  bool deliver(const std::shared_ptr<LaneConsumer>& c, const std::shared_ptr<void>& sub, const BusMessagePtr& msg);
  void start_wait(const std::shared_ptr<LaneConsumer>& c);
  // Caller holds mu_ and found the lane idle: takes the waiters to run after unlocking.
  std::vector<std::function<void()>> take_idle_locked();

  const size_t max_bytes_;
  mutable std::mutex mu_;
  std::deque<Entry> backlog_;
  size_t backlog_bytes_ = 0;
  const LaneConsumer* waiting_on_ = nullptr;
  std::weak_ptr<LaneConsumer> waiting_ref_;
  bool overflowed_ = false;  // lane_overflow() was called for the consumer waited on
  bool draining_ = false;    // one thread delivers from the backlog
  uint64_t dropped_ = 0;
  BudgetShare share_;
  std::atomic<uint64_t>* budget_drops_ = nullptr;
  std::vector<std::function<void()>> idle_waiters_;
};

}  // namespace busgate::gw
