#pragma once
// Durable work queues on the bus (docs/protocol.md section 16): streams that store what is
// published to their subjects, durable consumers that deliver each stored message to one
// subscriber at a time with acknowledgement, redelivery, a cluster-wide cap on unacknowledged
// deliveries (max_inflight) and dead-lettering after the last attempt.
//
// Everything here speaks bus subjects (already mapped into a tenant's namespace). The Session
// builds the specs from the tenant's configuration; MemoryBus and NatsBus (JetStream) implement
// the same semantics.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "bus.hpp"

namespace busgate::gw {

struct StreamSpec {
  std::string tenant;
  std::string name;                   // the operator's name, unique within the tenant
  std::string bus_name;               // the stream's name on the bus: busgate_<tenant>_<name>
  std::vector<std::string> subjects;  // bus subject patterns
  bool workqueue = true;              // retention: work queue (removed once acked) or limits
  uint64_t max_age_ms = 0;            // 0: unlimited
  int64_t max_bytes = -1;             // -1: unlimited
  int64_t max_msgs = -1;              // -1: unlimited
  bool file_storage = true;
  uint32_t replicas = 1;
  uint64_t duplicate_window_ms = 120000;
};

struct ConsumerSpec {
  std::string tenant;
  std::string name;         // durable name, unique within the stream
  std::string stream;       // the operator's stream name
  std::string stream_bus;   // StreamSpec::bus_name
  std::string filter;       // bus subject pattern the consumer takes
  uint32_t max_inflight = 15;        // delivered and unacknowledged, across every node (MaxAckPending)
  uint64_t ack_wait_ms = 30000;
  uint32_t max_deliveries = 5;       // attempts; the next one is dead-lettered instead
  std::vector<uint64_t> backoff_ms;  // NAK without a delay: backoff[attempt-1] (last entry repeats)
  std::string dead_letter;           // bus subject dead letters are published to
  std::string dead_letter_client;    // the same, as the tenant sees it (for the header)
  std::string filter_client;         // the filter as the tenant sees it
  bool deliver_all = true;           // a new consumer starts with the first retained message
  bool declared = true;              // declared by the operator; false: created by a client's SUB
  std::string tenant_prefix;         // the tenant's bus namespace ("t.acme.")

  // A stored message's bus subject as the tenant sees it.
  std::string_view client_subject(std::string_view bus_subject) const {
    return bus_subject.starts_with(tenant_prefix) ? bus_subject.substr(tenant_prefix.size()) : bus_subject;
  }

  // The redelivery delay after a NAK without an explicit delay, for the attempt that failed.
  uint64_t backoff_for(uint32_t attempt) const {
    if (backoff_ms.empty()) return 0;
    const size_t i = attempt == 0 ? 0 : attempt - 1;
    return backoff_ms[i < backoff_ms.size() ? i : backoff_ms.size() - 1];
  }
};

// The receiving end of a durable subscription (a session). Called on any thread, never
// concurrently for one subscription. Returns false when the delivery could not be queued to the
// client (the connection is closing or over its outbound bound): the bus then releases it for
// redelivery at once.
class DurableSink {
 public:
  virtual ~DurableSink() = default;
  virtual bool on_durable(const BusMessagePtr& msg, uint64_t delivery_id, uint32_t attempt) = 0;
};

// How a subscription takes work: at most `limit` outstanding (delivered, not yet acked, nakked or
// terminated) on this subscription, and in credit mode only against credits granted.
struct DurableWindow {
  uint32_t limit = 1;
  bool credit_mode = false;
};

class DurableSubscription {
 public:
  virtual ~DurableSubscription() = default;
  // Deliveries begin only once start() is called (the session calls it right after it has sent
  // the SUB's OK, so that MSG never precedes OK). Implementations may also start at once.
  virtual void start() {}
  // Credit mode: allow n more deliveries (added to what is left).
  virtual void add_credit(uint64_t n) = 0;
  // false: the delivery id is not outstanding on this subscription (UNKNOWN_DELIVERY).
  virtual bool ack(uint64_t delivery_id) = 0;
  // delay_ms 0: the consumer's backoff for that attempt.
  virtual bool nak(uint64_t delivery_id, uint64_t delay_ms) = 0;
  virtual bool progress(uint64_t delivery_id) = 0;  // restarts the ack wait
  virtual bool term(uint64_t delivery_id, const std::string& reason) = 0;  // no redelivery; dead-lettered
  // Ends the subscription: nothing is delivered after it returns (except a delivery already
  // running), and every outstanding delivery is released for redelivery at once.
  virtual void close() = 0;
  virtual uint32_t outstanding() const = 0;
};

struct ConsumerStats {
  std::string tenant, stream, consumer;
  uint64_t pending = 0;        // stored, not yet delivered (the backlog)
  uint64_t ack_pending = 0;    // delivered, not yet acknowledged
  uint64_t redelivered = 0;    // deliveries that were a second or later attempt
  uint64_t dead_lettered = 0;  // messages sent to the dead-letter subject
  uint32_t max_inflight = 0;
  uint32_t subscribers = 0;    // on this node
};

// Result of opening a durable subscription: code ok and the subscription, or an error code
// (unknown_stream, too_many_consumers, invalid_option, bus_unavailable) and a message.
using DurableReadyFn =
    std::function<void(proto::Code code, std::string message, std::shared_ptr<DurableSubscription> sub)>;
// Result of a stored publish: ok once the stream has stored it (or recognised a duplicate of
// msg_id within its window); not_stored, bus_unavailable otherwise.
using StoredFn = std::function<void(proto::Code code, std::string message)>;

// The durable half of a bus. Implemented by MemoryBus and NatsBus.
class DurableBus {
 public:
  virtual ~DurableBus() = default;
  // Creates or updates every stream and declared consumer (idempotent; at start and on reload).
  // Streams and consumers that are no longer configured are left on the bus (their data is the
  // operator's), but no longer used.
  virtual void configure_durable(std::vector<StreamSpec> streams, std::vector<ConsumerSpec> consumers) = 0;
  // Publishes msg into the stream that stores its subject and calls done once it is stored.
  // msg_id (may be empty) dedupes re-sends within the stream's duplicate window.
  virtual void publish_stored(BusMessagePtr msg, std::string msg_id, StoredFn done) = 0;
  // Opens a durable subscription on consumer `spec` (declared: must exist; otherwise created when
  // missing, counted against max_client_consumers for its tenant). `ready` runs once, on any thread.
  virtual void subscribe_durable(ConsumerSpec spec, DurableWindow window, uint32_t max_client_consumers,
                                 std::shared_ptr<DurableSink> sink, DurableReadyFn ready) = 0;
  virtual std::vector<ConsumerStats> consumer_stats() = 0;
};

struct TenantConfig;
struct ConsumerConfig;
struct StreamConfig;
// The bus view of a tenant's configured streams and consumers (docs/configuration.md).
StreamSpec stream_spec(const TenantConfig& t, const StreamConfig& s);
ConsumerSpec consumer_spec(const TenantConfig& t, const StreamConfig& s, const ConsumerConfig& c);
// Every stream and declared consumer of these tenants.
void durable_specs(const std::vector<TenantConfig>& tenants, std::vector<StreamSpec>& streams,
                   std::vector<ConsumerSpec>& consumers);

// The dead letter of `msg`: the same payload and headers, plus busgate-dead-reason,
// busgate-attempts, busgate-subject (the tenant-relative subject it was published to),
// busgate-stream and busgate-consumer. Published to spec.dead_letter.
BusMessagePtr make_dead_letter(const BusMessage& msg, const ConsumerSpec& spec, std::string_view client_subject,
                               std::string_view reason, uint32_t attempts);

}  // namespace busgate::gw
