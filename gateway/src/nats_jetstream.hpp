#pragma once
// The durable half of NatsBus (durable.hpp) on NATS JetStream, spoken over the gateway's own NATS
// link: the JetStream JSON API ($JS.API.*) for streams and consumers, stored publishes confirmed by
// the server's PubAck, and pull consumers ($JS.API.CONSUMER.MSG.NEXT) whose requests never ask for
// more than a subscription's window has room for and ask for idle heartbeats (so a request lost
// with a server is noticed in seconds). Acknowledgements go to each delivery's $JS.ACK subject;
// the gateway refuses those of deliveries whose ack wait has passed (JetStream would still take
// them), and a subscription that ends makes the consumer drop its waiting requests before it
// releases what it held, so a release is exactly one attempt.
//
// Threading: the link thread delivers messages, API answers and link events; one timer thread
// expires API requests and local ack waits, retries the configuration and recovers stalled pulls.
// Nothing here blocks the link thread.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "durable.hpp"

namespace busgate::gw {

class NatsLink;
struct NatsInbound;
class JsSub;

class NatsJetStream final : public DurableBus {
 public:
  // NATS subscription ids from here up belong to JetStream (the API inbox and one per durable
  // subscription); NatsBus hands their messages to on_message().
  static constexpr uint64_t kSidBase = uint64_t{1} << 48;

  // `inbox_prefix`: a subject prefix in this node's inbox space ("_INBOX.<node>.js.").
  NatsJetStream(NatsLink& link, std::string inbox_prefix);
  ~NatsJetStream() override;
  NatsJetStream(const NatsJetStream&) = delete;
  NatsJetStream& operator=(const NatsJetStream&) = delete;

  void configure_durable(std::vector<StreamSpec> streams, std::vector<ConsumerSpec> consumers) override;
  void publish_stored(BusMessagePtr msg, std::string msg_id, StoredFn done) override;
  void subscribe_durable(ConsumerSpec spec, DurableWindow window, uint32_t max_client_consumers,
                         std::shared_ptr<DurableSink> sink, DurableReadyFn ready) override;
  std::vector<ConsumerStats> consumer_stats() override;

  static bool owns(uint64_t sid) { return sid >= kSidBase; }
  void on_message(const NatsInbound& m);    // link thread
  void on_link_event(std::string_view what);  // link thread: "connected", "reconnected", "disconnected"
  // False while a durable configuration is waiting for its first answers from JetStream.
  bool ready() const;
  // Stops the timer thread; call before the link goes away.
  void stop();

 private:
  friend class JsSub;  // one durable subscription (nats_jetstream.cpp)
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace busgate::gw
