#pragma once
// The production bus: NATS through cnats. One bus subscription per (subject, queue group) per node,
// fanned out locally; requests through one wildcard inbox subscription per node.

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "bus.hpp"
#include "config.hpp"

struct __natsConnection;
struct __natsSubscription;
struct __natsMsg;

namespace busgate::gw {

class NatsBus final : public Bus {
 public:
  explicit NatsBus(const GatewayConfig& cfg);
  ~NatsBus() override;

  uint64_t subscribe(const std::string& subject, const std::string& queue, DeliverFn fn) override;
  void unsubscribe(uint64_t id) override;
  proto::Code publish(BusMessagePtr msg, bool immediate) override;
  uint64_t request(std::shared_ptr<BusMessage> msg, ReplyFn fn) override;
  void cancel_request(uint64_t token) override;
  bool healthy() const override;
  size_t max_message() const override;
  const char* kind() const override { return "nats"; }
  BusStats stats() const override;

  struct Interest;  // one NATS subscription and its local subscribers (public for the C callbacks)
  void on_message(Interest& in, __natsMsg* m);
  void on_inbox(__natsMsg* m);
  void on_connection_event(const char* what, __natsConnection* nc);

 private:
  __natsConnection* connect(const GatewayConfig& cfg, const std::string& name, bool send_asap);
  proto::Code send(__natsConnection* nc, const BusMessage& msg);
  // Adds a local subscriber, creating the bus subscription if needed: 1 created, 0 existed,
  // -1 the bus refused. Caller holds mu_.
  int add_local(const std::string& subject, const std::string& queue, uint64_t id, std::shared_ptr<DeliverFn> local);

  std::string node_id_;
  std::string inbox_prefix_;
  // Bulk publishes go through a connection that batches writes; requests and replies through one
  // that writes at once (cnats otherwise holds writes for its flusher, ~1 ms).
  __natsConnection* bulk_ = nullptr;
  __natsConnection* fast_ = nullptr;
  __natsSubscription* inbox_sub_ = nullptr;

  mutable std::mutex mu_;
  std::map<std::pair<std::string, std::string>, Interest*> interests_;
  std::unordered_map<uint64_t, Interest*> by_local_id_;
  std::atomic<uint64_t> next_id_{1};

  ReplyTable requests_;
  std::atomic<uint64_t> reconnects_{0};
  mutable std::atomic<int64_t> max_payload_{0};  // the server's max_payload, remembered while disconnected
};

}  // namespace busgate::gw
