#include "delivery_lane.hpp"

namespace busgate::gw {

namespace {
size_t entry_bytes(const BusMessage& m) {
  return m.subject.size() + m.reply_to.size() + m.headers.size() + m.payload.size() + 64;
}
}  // namespace

bool DeliveryLane::offer(const std::shared_ptr<LaneConsumer>& consumer, std::shared_ptr<void> sub, BusMessagePtr msg) {
  std::shared_ptr<LaneConsumer> overflow;
  size_t backlog = 0;
  {
    std::lock_guard lk(mu_);
    if (busy_locked()) {
      const size_t n = entry_bytes(*msg);
      if (backlog_bytes_ + n > 2 * max_bytes_) {
        ++dropped_;
        return false;
      }
      if (share_.overrun(n)) {
        ++dropped_;
        if (budget_drops_) budget_drops_->fetch_add(1, std::memory_order_relaxed);
        return false;
      }
      backlog_.push_back({consumer, std::move(sub), std::move(msg), n});
      backlog_bytes_ += n;
      share_.report(backlog_bytes_);
      if (backlog_bytes_ > max_bytes_ && waiting_on_ && !overflowed_) {
        overflowed_ = true;
        overflow = waiting_ref_.lock();
        backlog = backlog_bytes_;
      }
    }
  }
  if (overflow) {
    overflow->lane_overflow(backlog);
    return true;
  }
  if (!msg) return true;  // kept in the backlog
  if (deliver(consumer, sub, msg)) start_wait(consumer);
  return true;
}

bool DeliveryLane::deliver(const std::shared_ptr<LaneConsumer>& c, const std::shared_ptr<void>& sub,
                           const BusMessagePtr& msg) {
  return c->lane_deliver(sub, msg);
}

void DeliveryLane::start_wait(const std::shared_ptr<LaneConsumer>& c) {
  {
    std::lock_guard lk(mu_);
    if (waiting_on_) return;  // already waiting for another consumer: this one is seen again later
    waiting_on_ = c.get();
    waiting_ref_ = c;
    overflowed_ = false;
  }
  c->lane_wait(shared_from_this());
}

bool DeliveryLane::resume(const LaneConsumer* consumer, size_t budget) {
  {
    std::lock_guard lk(mu_);
    if (waiting_on_ != consumer || consumer == nullptr) return false;
    waiting_on_ = nullptr;
    waiting_ref_.reset();
    if (draining_) return false;  // the thread delivering the backlog goes on
    draining_ = true;
  }
  return drain(budget);
}

bool DeliveryLane::drain(size_t budget) {
  for (size_t n = 0;; ++n) {
    std::unique_lock lk(mu_);
    if (waiting_on_) {
      draining_ = false;
      return false;
    }
    if (backlog_.empty()) {
      draining_ = false;
      auto waiters = take_idle_locked();
      lk.unlock();
      for (auto& fn : waiters) fn();
      return false;
    }
    if (n == budget) return true;
    Entry e = std::move(backlog_.front());
    backlog_.pop_front();
    backlog_bytes_ -= e.bytes;
    share_.report(backlog_bytes_);
    lk.unlock();
    if (auto c = e.consumer.lock(); c && deliver(c, e.sub, e.msg)) start_wait(c);
  }
}

void DeliveryLane::when_idle(std::function<void()> fn) {
  {
    std::lock_guard lk(mu_);
    if (busy_locked()) {
      idle_waiters_.push_back(std::move(fn));
      return;
    }
  }
  fn();
}

std::vector<std::function<void()>> DeliveryLane::take_idle_locked() {
  std::vector<std::function<void()>> out;
  if (!busy_locked()) out.swap(idle_waiters_);
  return out;
}

}  // namespace busgate::gw
