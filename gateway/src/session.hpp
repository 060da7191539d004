#pragma once
// The one busgate protocol state machine, shared by every transport.

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "busgate/protocol/codec.hpp"
#include "bus.hpp"
#include "delivery_lane.hpp"
#include "outbound_queue.hpp"
#include "queue_budget.hpp"
#include "reply_grants.hpp"
#include "request_table.hpp"
#include "durable.hpp"
#include "tenancy.hpp"
#include "transport.hpp"

namespace busgate::gw {

class Server;

class Session : public std::enable_shared_from_this<Session>, public LaneConsumer {
 public:
  enum class State { handshake, open, draining, closed };

  Session(Server& server, boost::asio::any_io_executor ex, uint64_t id);
  ~Session();

  // Transport → Session (on the connection's executor).
  void attach(Transport* t);
  void on_frame(std::string_view body);
  // The end of a read batch: flushes replies. False when the bus is congested: the transport stops
  // reading this client until the bus drains (then resume_read()).
  bool on_batch_end();
  // True while a SUB waits for the bus: the transport stops handing frames over (they stay buffered)
  // until resume_read().
  bool holding() const { return sub_pending_; }
  // A fatal protocol error found by the transport (oversized length, not busgate, bad WS message).
  void fail(proto::Code code, std::string message);
  // The transport is gone (peer closed, I/O error, or after close()).
  void on_closed(std::string reason);

  // Server → Session (any thread; they post to the executor).
  void goaway(uint32_t delay_ms);
  void shutdown(proto::Code code, std::string message);  // fatal ERR and close
  // After a reload: the credentials are still valid (else AUTH_REVOKED), and every subscription is
  // one the new configuration would make as it is (else it ends with ERR PERMISSION_DENIED).
  void recheck_auth();

  // Introspection for the admin API and metrics (thread-safe snapshots).
  struct Info {
    uint64_t id;
    std::string session_id, tenant, transport, remote, name, state;
    size_t subscriptions, inflight;
    uint64_t msgs_in, msgs_out, bytes_in, bytes_out;
    size_t pending_bytes;
  };
  Info info() const;
  struct SubInfo {
    uint32_t sid;
    std::string subject, queue, bus_subject;
  };
  std::vector<SubInfo> subscriptions() const;
  // What a refusal of this client matches (admin_refusals.hpp): its tenant, client name, remote
  // address and the digest of the token it authenticated with (empty before HELLO).
  struct ClientKey {
    std::string tenant, name, address, token_digest;
  };
  ClientKey client_key() const;
  uint64_t id() const { return id_; }
  State state() const { return state_.load(); }
  // The tenant's counters once authenticated, the node's unauthenticated ones before (any thread).
  TenantMetrics& tenant_metrics() const;

 private:
  struct SubState;
  class DurableSinkImpl;

  void handle(const proto::Frame& f, const proto::DecodeResult& r);
  void on_hello(const proto::Hello& h, const proto::DecodeResult& r);
  void on_pub(const proto::Pub& p, const proto::DecodeResult& r);
  // PUB with ack: answered once the bus server has the message (Bus::confirm).
  void confirm_pub(uint64_t ref);
  void answer_pub(uint64_t ref, proto::Code c);
  void on_sub(const proto::Sub& s, const proto::DecodeResult& r);
  void on_unsub(const proto::Unsub& u);
  // The checks every SUB passes (sid free, max_subscriptions, permissions); false once an ERR is sent.
  bool admit_sub(const proto::Sub& s, const TenantConfig& c, RuleCheck& rc);
  // A subscription's state as the configuration `c` makes it (plain and durable alike).
  std::shared_ptr<SubState> new_sub(const proto::Sub& s, const TenantConfig& c) const;
  // Durable consumption (session_durable.cpp, docs/protocol.md section 16).
  void on_durable_sub(const proto::Sub& s);
  void finish_durable_sub(const std::shared_ptr<SubState>& st, proto::Code code, const std::string& why,
                          std::shared_ptr<DurableSubscription> sub);
  bool deliver_durable(SubState& sub, const BusMessagePtr& m, uint64_t delivery_id, uint32_t attempt);
  void on_settle(uint64_t op, uint32_t sid, uint64_t delivery_id, uint64_t delay_ms, std::string_view reason);
  void on_credit(const proto::Credit& c);
  // A PUB to a subject a stream stores, with ack or msg_id: answered once stored.
  bool publish_stored(const proto::Pub& p, const BusMessagePtr& msg);
  static bool stream_stores(const TenantConfig& c, std::string_view bus_subject);
  void end_durable(SubState& st);
  void finish_sub(const std::shared_ptr<SubState>& st, proto::Code code);
  void on_req(const proto::Req& q, const proto::DecodeResult& r);
  void on_bus_reply(uint32_t req_id, uint64_t token, proto::Code status, const BusMessagePtr& reply);
  bool answer_now(uint32_t req_id, std::atomic<int>& claim, std::chrono::steady_clock::time_point started,
                  const BusMessage& reply);
  void finish_answered(uint32_t req_id, uint64_t token);
  void end_request(uint32_t req_id, bool replied);  // erases a request; gives back its slot unless replied
  void request_done();  // a request left the table: counters and the tenant's in-flight limit
  void arm_request_timer(std::chrono::steady_clock::time_point deadline);
  void on_request_timer();
  void remove_sub(uint32_t sid);

  // Outbound (any thread): a plain subscription's message goes through the tenant's delivery lane
  // (delivery_lane.hpp), which calls lane_deliver().
  void deliver(const std::shared_ptr<SubState>& sub, const BusMessagePtr& m);
  bool lane_deliver(const std::shared_ptr<void>& sub, const BusMessagePtr& msg) override;
  void lane_wait(const std::shared_ptr<DeliveryLane>& lane) override;
  void lane_overflow(size_t backlog_bytes) override;
  void start_lane_wait(const std::shared_ptr<DeliveryLane>& lane);  // executor
  void on_lane_timer();
  void arm_lane_timer();  // the next look for progress, kProducerStall from now
  void resume_lane(std::shared_ptr<DeliveryLane> lane);  // executor
  // Encodes a MSG into the outbound queue (under out_mu_); false when it was not queued (closing,
  // above max_frame: ERR PAYLOAD_TOO_LARGE instead, or over the outbound bound). `congested`, when
  // given, is set when the queue is now past half its bound and a delivery lane should wait for it.
  bool queue_msg(SubState& sub, const BusMessage& m, std::string_view subject, bool durable, uint64_t delivery_id,
                 uint32_t attempt, bool* congested = nullptr);
  void send_err(proto::Code code, std::string_view message, uint64_t ref_op = 0, uint64_t ref_id = 0);
  void send_ok(uint64_t ref_op, uint64_t ref_id);
  void send_res(uint32_t req_id, proto::Code status, std::string_view message);
  void send_frame(const proto::Frame& f);
  // Checks the outbound bound for `extra` more bytes; false (and the slow-consumer policy applied)
  // when the frame must be dropped. Caller holds out_mu_.
  // Control frames (OK, ERR, PONG, RES) count toward the outbound bound too: false (and the
  // slow-consumer policy) when the queue is past it with some slack.
  void recheck_subscriptions();
  bool control_room_locked();
  void over_budget_locked(const char* which);
  bool admit_locked(size_t extra);
  void resume_paced();             // publisher side: the tenant's lane is idle again
  bool peer_acked_more_locked();   // the peer acknowledged bytes since the last look
  void schedule_flush_locked();
  bool write_through_locked();
  void flush();
  void on_write(bool ok);
  void fatal(proto::Code code, std::string_view message, uint64_t ref_op = 0);
  void close_transport();
  void cleanup();

  const TenantConfig& cfg();  // refreshed when the tenant's configuration was reloaded
  void encode_headers_with_tenant(const proto::Headers& h, std::string& out) const;
  void arm_handshake_timer();
  void arm_heartbeat();
  void finish_drain();  // at the GOAWAY delay: RES SHUTTING_DOWN for in-flight REQs, then close

  Server& server_;
  boost::asio::any_io_executor ex_;
  uint64_t id_;
  std::string session_id_;
  Transport* transport_ = nullptr;
  std::string transport_kind_ = "tcp";
  std::string remote_;
  std::atomic<State> state_{State::handshake};
  std::string client_name_;
  std::string close_reason_;
  proto::Code close_code_ = proto::Code::ok;  // the fatal error that closes the connection

  mutable std::mutex meta_mu_;  // guards tenant_ and client_name_ against info() on other threads
  std::shared_ptr<TenantState> tenant_;
  std::atomic<TenantMetrics*> tenant_metrics_{nullptr};  // &tenant_->metrics, set at HELLO
  std::shared_ptr<const TenantConfig> cfg_;
  uint64_t cfg_gen_ = 0;
  std::string token_digest_;
  bool counted_connection_ = false;

  size_t max_frame_ = proto::kPreHandshakeMaxFrame;
  size_t max_payload_ = proto::kDefaultMaxPayload;
  uint32_t heartbeat_ms_ = 0;
  bool rx_since_tick_ = false;
  bool ping_outstanding_ = false;
  boost::asio::steady_timer handshake_timer_;
  boost::asio::steady_timer heartbeat_timer_;
  boost::asio::steady_timer drain_timer_;
  boost::asio::steady_timer close_timer_;  // bounds how long a fatal ERR may wait to be written

  std::unordered_map<uint32_t, std::shared_ptr<SubState>> subs_;  // changed on the executor only
  mutable std::mutex subs_mu_;  // held while subs_ changes, and by readers on other threads
  RequestTable inflight_;
  boost::asio::steady_timer request_timer_;

  mutable std::mutex out_mu_;
  OutboundQueue out_;         // under out_mu_
  BudgetShare budget_;        // under out_mu_: out_ counted toward the tenant's and the node's budgets
  bool flush_posted_ = false;
  bool closing_ = false;     // a fatal ERR is queued: write it, then close
  // Producer flow control (delivery_lane.hpp): when a delivery takes the queue past half of
  // max_pending_, the tenant's lane waits for this session's writes to bring it back (lane_waiting_),
  // so that a consumer that reads, only slower than a burst arrives, slows the burst down instead of
  // being cut off. A consumer that makes no progress for kIdleStallsToGiveUp pace intervals is not
  // waited for again until its queue has emptied (stall_spent_).
  uint64_t writes_mark_ = 0;  // out_.writes_done() at the last look of the lane timer
  uint32_t idle_stalls_ = 0;  // consecutive pace intervals that saw no progress
  uint64_t acked_mark_ = 0;   // the peer's acknowledged bytes at the last look
  std::atomic<int> fd_{-1};   // the socket, for TCP_INFO on the executor only; -1 once closed
  bool stall_spent_ = false;
  std::shared_ptr<DeliveryLane> lane_waiting_;  // the lane that waits for this session (under out_mu_)
  boost::asio::steady_timer lane_timer_;
  std::shared_ptr<DeliveryLane> lane_;  // the tenant's, set at HELLO (executor), read by bus threads after
  bool published_ = false;    // this read batch held a PUB (executor only)
  bool sub_pending_ = false;  // a SUB waits for the bus; later frames wait for it (executor only)
  bool paced_ = false;        // reading paused until the tenant's lane is idle
  ReplyGrants grants_;  // under out_mu_

  std::atomic<size_t> sub_count_{0}, inflight_count_{0};
  std::atomic<uint64_t> msgs_in_{0}, msgs_out_{0}, bytes_in_{0}, bytes_out_{0};
};

}  // namespace busgate::gw
