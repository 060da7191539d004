#pragma once
// The production bus: NATS, through the gateway's own NATS link (nats_link.hpp). One bus
// subscription per (subject, queue group) per node, fanned out locally; requests through one
// wildcard inbox subscription per node, with random request tokens. Streams and durable consumers
// are JetStream's, spoken over the same link (nats_jetstream.hpp). A node that finds another live
// node with its id on the bus does not become ready (node_probe.hpp).

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>

#include "bus.hpp"
#include "config.hpp"
#include "node_probe.hpp"

namespace busgate::gw {

class NatsLink;
class NatsJetStream;
struct NatsInbound;

// msgpack headers map → NATS header block ("NATS/1.0\r\nKey: value\r\n...\r\n"), into `out`.
void to_nats_headers(std::string_view packed, std::string& out);
// NATS header block → msgpack map (the first value of each key), into `out`; returns the status
// code on the version line ("503" for no responders), empty for none. A value is the bytes after
// the colon less the one space `Key: value` puts there: spaces and tabs around it are kept. A
// reserved `busgate-` key is kept only in its lowercase form (other casings are dropped and
// counted, so a client never gets two differently cased copies). `drop_nats`: leave out the
// server's own "Nats-" headers (a stored message's Nats-Msg-Id).
// `drop_msg_id`: leave out `Nats-Msg-Id` (the idempotency key the gateway sets on stored publishes).
std::string_view from_nats_headers(std::string_view block, std::string& out, bool drop_nats = false,
                                   bool drop_msg_id = false);

class NatsBus final : public Bus {
 public:
  explicit NatsBus(const GatewayConfig& cfg);
  ~NatsBus() override;

  uint64_t subscribe(const std::string& subject, const std::string& queue, DeliverFn fn) override;
  using Bus::subscribe_async;
  uint64_t subscribe_async(const std::string& subject, const std::string& queue, DeliverFn fn, CodeFn done) override;
  void unsubscribe(uint64_t id) override;
  proto::Code publish(BusMessagePtr msg, bool immediate) override;
  proto::Code publish_copy(std::string_view subject, std::string_view reply_to, std::string_view headers,
                           std::string_view payload, bool immediate) override;
  uint64_t request(std::shared_ptr<BusMessage> msg, ReplyFn fn) override;
  void cancel_request(uint64_t token) override;
  // One PING/PONG shared by the calls made before the link's next write batch (NatsLink::ping).
  void confirm(CodeFn done) override;
  // Connected, JetStream configured, and no other live node uses this node's id on the bus.
  bool healthy() const override;
  std::string not_ready_reason() const override;
  size_t max_message() const override;
  const char* kind() const override { return "nats"; }
  BusStats stats() const override;
  bool congested() const override;
  void when_drained(std::function<void()> fn) override;
  DurableBus* durable() override;

 private:
  struct Interest;  // one NATS subscription and its local subscribers
  void on_message(const NatsInbound& m);
  void on_inbox(const NatsInbound& m);
  void on_link_event(std::string_view what);
  void on_refused(uint64_t sid, std::string_view error);
  void drop_local(const std::shared_ptr<Interest>& in, uint64_t id);
  void on_probe_message(std::string_view token);
  void publish_probe(const std::string& token);
  void run_probe_timer();

  std::string node_id_;
  std::string inbox_prefix_;
  // Another live node with this id on the bus (node_probe.hpp), and the thread that times probes.
  mutable std::mutex probe_mu_;
  std::condition_variable probe_cv_;
  NodeIdProbe probe_;
  NodeIdProbe::Clock::time_point last_conflict_log_{};
  bool probe_stop_ = false;
  std::thread probe_timer_;
  mutable std::mutex mu_;
  std::map<std::pair<std::string, std::string>, std::shared_ptr<Interest>> interests_;
  std::unordered_map<uint64_t, Interest*> by_sid_;  // NATS sid → interest (owned by interests_)
  std::unordered_map<uint64_t, std::shared_ptr<Interest>> by_local_id_;
  std::atomic<uint64_t> next_id_{2};  // subscription ids; sid 1 is the node inbox
  std::atomic<uint64_t> subs_refused_{0};
  ReplyTable requests_;
  std::unique_ptr<NatsJetStream> js_;  // JetStream: streams and durable consumers
  std::unique_ptr<NatsLink> link_;  // declared last: stopped before the rest goes away
};

}  // namespace busgate::gw
