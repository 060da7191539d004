#pragma once
// Durable work queues of the memory bus: streams and durable consumers in process, with the same
// semantics as JetStream on the NATS bus (docs/protocol.md section 16), lost when the gateway stops.
// One mutex guards every stream and consumer; one thread runs ack-wait expiries, delayed
// redeliveries and age limits, and is joined by the destructor.

#include <chrono>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "durable.hpp"

namespace busgate::gw {

class MemoryDurable final : public DurableBus {
 public:
  using Clock = std::chrono::steady_clock;
  // Publishes a message the engine produces (a dead letter) as any publisher would: it is stored
  // when a stream covers its subject and delivered to plain subscribers.
  using PublishFn = std::function<void(BusMessagePtr)>;

  // `deliver_plain` hands a stored message to plain (non-durable) subscribers.
  MemoryDurable(PublishFn publish, PublishFn deliver_plain);
  ~MemoryDurable() override;

  void configure_durable(std::vector<StreamSpec> streams, std::vector<ConsumerSpec> consumers) override;
  void publish_stored(BusMessagePtr msg, std::string msg_id, StoredFn done) override;
  void subscribe_durable(ConsumerSpec spec, DurableWindow window, uint32_t max_client_consumers,
                         std::shared_ptr<DurableSink> sink, DurableReadyFn ready) override;
  std::vector<ConsumerStats> consumer_stats() override;

  // Every published message passes here: stored when a stream covers its subject. Cheap when no
  // stream exists.
  void on_publish(const BusMessagePtr& msg);

 private:
  struct Stream;
  struct Consumer;
  class Sub;
  struct Stored {
    uint64_t seq = 0;
    BusMessagePtr msg;
    Clock::time_point at;
    bool deleted = false;
  };
  struct Pending {
    uint32_t attempt = 0;          // deliveries so far
    Sub* sub = nullptr;            // outstanding on this subscription; nullptr: waiting for redelivery
    uint64_t delivery_id = 0;
    Clock::time_point deadline;    // outstanding: the ack wait; waiting: when it is due
  };
  struct Consumer {
    ConsumerSpec spec;
    Stream* stream = nullptr;
    uint64_t cursor = 1;                    // the next stream sequence not yet delivered
    std::map<uint64_t, Pending> pending;    // seq → delivered and not done
    uint32_t outstanding = 0;               // pending entries held by a subscription
    std::set<uint64_t> ready;               // waiting entries due for redelivery now
    std::vector<Sub*> subs;
    size_t rr = 0;
    uint64_t redelivered = 0, dead_lettered = 0;
  };
  struct Stream {
    StreamSpec spec;
    std::deque<Stored> msgs;  // seq order; msgs[i].seq == first_seq + i
    uint64_t first_seq = 1;
    uint64_t next_seq = 1;
    uint64_t live = 0, bytes = 0;
    std::unordered_map<std::string, Clock::time_point> dedupe;  // msg_id → expiry
    std::deque<std::pair<Clock::time_point, std::string>> dedupe_order;
    std::vector<Consumer*> consumers;
  };
  using Outbox = std::vector<BusMessagePtr>;  // dead letters, published after the lock is released

  proto::Code store_locked(const BusMessagePtr& msg, std::string_view msg_id, Stream& s, Clock::time_point now,
                           std::string& why, bool& duplicate);
  Stream* stream_for_locked(std::string_view subject);
  Stored* find_locked(Stream& s, uint64_t seq);
  void remove_locked(Stream& s, uint64_t seq);
  void pump_locked(Consumer& c, Clock::time_point now, Outbox& out);
  Sub* pick_sub_locked(Consumer& c);
  void dead_letter_locked(Consumer& c, uint64_t seq, const Stored& m, std::string reason, uint32_t attempts,
                          Outbox& out);
  void settle_locked(Sub& sub, uint64_t delivery_id, Outbox& out, const std::function<void(Consumer&, uint64_t, Pending&)>& fn,
                     bool& found);
  void release_locked(Sub& sub, Clock::time_point now);
  void flush(Outbox& out);
  void wake_at_locked(Clock::time_point t);  // the timer must run by t
  void timer_loop();
  uint64_t stored_bytes(const BusMessage& m) const {
    return m.subject.size() + m.headers.size() + m.payload.size();
  }

  PublishFn publish_;
  PublishFn deliver_plain_;
  Clock::time_point timer_next_ = Clock::time_point::max();
  // The engine's mutex, shared with its subscriptions: one that outlives the engine (its session
  // is destroyed after the bus) finds `gone` set under it and leaves the engine alone.
  struct Guard {
    std::mutex mu;
    bool gone = false;
  };
  const std::shared_ptr<Guard> guard_ = std::make_shared<Guard>();
  std::mutex& mu_ = guard_->mu;
  std::condition_variable cv_;
  bool stop_ = false;
  std::atomic<bool> any_streams_{false};
  std::map<std::string, std::unique_ptr<Stream>> streams_;                    // bus name → stream
  std::map<std::pair<std::string, std::string>, std::unique_ptr<Consumer>> consumers_;  // (stream bus name, name)
  std::thread timer_;
};

}  // namespace busgate::gw
