#pragma once
// One durable subscription on JetStream (part of nats_jetstream.cpp's engine, nats_js_internal.hpp).

#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "durable.hpp"
#include "nats_js_internal.hpp"

namespace busgate::gw {

// One durable subscription: a pull consumer client on its own inbox.
//
// Attempts. The attempt a client sees is JetStream's delivery count, and the server counts every
// delivery it makes, whether or not a client got it. So the server is only ever asked for what a
// client of this subscription is about to take (pull requests never ask for more than the window
// has room for), and a subscription that ends leaves no request behind when it releases what it
// held. The latter matters beyond one count: a JetStream consumer that has a redelivery to make
// and only waiting requests whose inbox is gone (or that just expired) drops those requests, and
// with them the redelivery, and steps its stream cursor back one message as if the message had
// been a first delivery (nats-server 2.9). The released message then comes back as attempt 1, and later with a count
// that includes the lost delivery. There is no way to cancel a pull request; the server drops the
// requests of an inbox that has no subscriber whenever it looks at its waiting requests, which a
// CONSUMER.INFO makes it do. So close() unsubscribes the inbox, asks for the consumer's info when
// requests were waiting, and releases (NAKs) the held deliveries once that is answered. A message
// the server had already sent to the inbox before the UNSUB reached it is released as it arrives,
// and that delivery is counted as an attempt.
//
// Ack waits. A delivery expires here at the consumer's ack wait after it arrived (restarted by
// PROGRESS), checked exactly when the client settles it, and a delivery of the same message
// reaching another subscription of this node ends the earlier one at once. An expired delivery is
// not outstanding: its ACK, NAK, PROGRESS or TERM is refused (UNKNOWN_DELIVERY) and nothing goes to
// the server, whose ack subject would otherwise still settle the message although it was
// redelivered (the delivery count in the subject is not checked).
class JsSub final : public DurableSubscription, public std::enable_shared_from_this<JsSub> {
  using Clock = js::Clock;

 public:
  JsSub(std::weak_ptr<NatsJetStream::Impl> js, ConsumerSpec s, DurableWindow w, std::shared_ptr<DurableSink> sink,
        uint64_t ack_wait_ms, uint64_t max_ack_pending);
  const ConsumerSpec spec;

  // Subscribes the first inbox (before the subscription is handed out).
  void attach();
  void start() override;
  void add_credit(uint64_t n) override;
  bool ack(uint64_t id) override;
  bool nak(uint64_t id, uint64_t delay_ms) override;
  bool progress(uint64_t id) override;
  bool term(uint64_t id, const std::string& reason) override;
  void close() override;
  uint32_t outstanding() const override;

  // ---- engine side

  // A message delivered on this subscription's inbox (`current`: the inbox in use, not a replaced
  // one).
  void on_msg(const NatsInbound& m, bool current);

  // Another subscription of this node got a delivery of `sseq`: this one's is over.
  void forget(uint64_t sseq);

  // A status message on the inbox: an idle heartbeat (100), a pull request ended (408) or was
  // refused.
  void on_status(const NatsInbound& m);

  // Pulls again on a fresh inbox (whatever was requested on the old one is lost or refused), at
  // once or after kPullRetry (`wait`). With `check`, the consumer is also checked and re-created if
  // it is missing (after a reconnect: a restarted server with memory storage), without holding the
  // pulls back: during a cluster failover the check may wait for a new leader as long as a pull.
  void recover(bool check, bool wait);
  void tick(Clock::time_point now, bool link_up);

 private:
  struct Out {
    std::string ack;
    uint32_t attempt;
    BusMessagePtr msg;
    Clock::time_point deadline;
    uint64_t sseq;
  };
  bool erase_locked(uint64_t id);
  void let_go(uint64_t sseq);
  static std::string nak_body(std::chrono::milliseconds delay);

  // Takes delivery `id` off this subscription; false when it is not outstanding (unknown, or its
  // ack wait has passed: then it is dropped and nothing is to be sent for it).
  bool take(uint64_t id, std::string& ack, uint32_t* attempt, BusMessagePtr* msg);

  // Acknowledgements go with the link's next batch: the ACKs of one client read share one write.
  void send(const std::string& ack, std::string_view body);

  // A new inbox (the old one retired): whatever was requested on the old one no longer counts.
  void relink_locked(NatsJetStream::Impl& js);

  // Asks for as many messages as the window has room for, beyond those already asked for. A new
  // request is sent when nothing is asked for, or when at least half the room is unasked (so a
  // subscription has few requests waiting on the server at a time).
  void pull();
  std::weak_ptr<NatsJetStream::Impl> js_;
  std::shared_ptr<DurableSink> sink_;
  const bool credit_;
  const Clock::duration ack_wait_;
  const std::string key_;  // stat_key of the consumer
  uint64_t limit_ = 1;
  std::string next_subject_;
  mutable std::mutex mu_;
  bool started_ = false, closed_ = false;
  bool checking_ = false;     // a check of the consumer is under way
  bool replaced_waiting_ = false;  // an inbox was replaced while requests waited for it
  bool beats_ = false;        // the last pull request asked for idle heartbeats
  bool quick_stall_ = false;  // ... and the server is known to send them
  uint64_t sid_ = 0;
  std::string inbox_;
  uint64_t requested_ = 0;  // asked of the server on the current inbox, not yet delivered
  uint64_t credits_ = 0;
  uint64_t next_id_ = 1;
  std::unordered_map<uint64_t, Out> out_;      // delivery id → outstanding delivery
  std::unordered_map<uint64_t, uint64_t> by_seq_;  // stream sequence → delivery id
  Clock::time_point last_heard_{}, last_pull_{}, pull_after_{};
  std::string last_failure_;
};

}  // namespace busgate::gw
