#pragma once
// The one busgate protocol state machine, shared by every transport.

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <deque>
#include <memory>
#include <condition_variable>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "busgate/protocol/codec.hpp"
#include "bus.hpp"
#include "durable.hpp"
#include "tenancy.hpp"
#include "transport.hpp"

namespace busgate::gw {

class Server;

class Session : public std::enable_shared_from_this<Session> {
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
  void recheck_auth();                                   // after a reload

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
  uint64_t id() const { return id_; }
  State state() const { return state_.load(); }

 private:
  struct SubState;
  class DurableSinkImpl;
  struct Inflight {
    uint64_t token = 0;  // the bus's request token
    std::chrono::steady_clock::time_point started;
    std::chrono::steady_clock::time_point deadline;
    uint64_t timeout_ms = 0;
  };

  void handle(const proto::Frame& f, const proto::DecodeResult& r);
  void on_hello(const proto::Hello& h, const proto::DecodeResult& r);
  void on_pub(const proto::Pub& p, const proto::DecodeResult& r);
  void on_sub(const proto::Sub& s, const proto::DecodeResult& r);
  void on_unsub(const proto::Unsub& u);
  // The checks every SUB passes (sid free, max_subscriptions, permissions); false once an ERR is sent.
  bool admit_sub(const proto::Sub& s, const TenantConfig& c, RuleCheck& rc);
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
  void finish_sub(const std::shared_ptr<SubState>& st);
  void on_req(const proto::Req& q, const proto::DecodeResult& r);
  void on_bus_reply(uint32_t req_id, uint64_t token, proto::Code status, const BusMessagePtr& reply);
  void finish_request(uint32_t req_id);
  void arm_request_timer(std::chrono::steady_clock::time_point deadline);
  void on_request_timer();
  void remove_sub(uint32_t sid);

  // Outbound (any thread): encode into the queue under out_mu_, then make sure a flush is coming.
  void deliver(SubState& sub, const BusMessagePtr& m);
  // Encodes a MSG into the outbound queue; false when it was not queued (closing, above max_frame:
  // ERR PAYLOAD_TOO_LARGE instead, or over the outbound bound).
  bool queue_msg(SubState& sub, const BusMessage& m, std::string_view subject, bool durable, uint64_t delivery_id,
                 uint32_t attempt);
  void send_err(proto::Code code, std::string_view message, uint64_t ref_op = 0, uint64_t ref_id = 0);
  void send_ok(uint64_t ref_op, uint64_t ref_id);
  void send_res(uint32_t req_id, proto::Code status, std::string_view message);
  void send_frame(const proto::Frame& f);
  // Checks the outbound bound for `extra` more bytes; false (and the slow-consumer policy applied)
  // when the frame must be dropped. Caller holds out_mu_.
  bool admit_locked(size_t extra);
  void stall_producer_locked(std::unique_lock<std::mutex>& lk);
  void resume_paced();      // publisher side: a consumer drained, or the pace timer fired
  void note_idle_stall();   // consumer side: a paced publisher waited 10 ms for nothing
  void count_idle_stall_locked();  // a wait without progress; gives up on this consumer after a few
  bool peer_acked_more_locked();   // the peer acknowledged bytes since the last look
  static void resume_publishers(const std::vector<std::weak_ptr<Session>>& publishers);
  // Bytes queued toward the client and not yet written. Caller holds out_mu_.
  size_t pending_locked() const { return out_buf_.size() + write_buf_.size() - write_off_; }
  void schedule_flush_locked();
  void flush();
  void on_write(bool ok);
  void fatal(proto::Code code, std::string_view message, uint64_t ref_op = 0);
  void close_transport();
  void cleanup();

  const TenantConfig& cfg();  // refreshed when the tenant's configuration was reloaded
  void encode_headers_with_tenant(const proto::Headers& h, std::string& out) const;
  // Maps a bus reply subject to what the client sees; grants the ones outside the tenant namespace.
  std::string map_reply_locked(const std::string& bus_reply, const std::string& own_prefix);
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

  std::shared_ptr<TenantState> tenant_;
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
  std::unordered_map<uint32_t, Inflight> inflight_;
  boost::asio::steady_timer request_timer_;
  std::chrono::steady_clock::time_point request_timer_at_ = std::chrono::steady_clock::time_point::max();

  mutable std::mutex out_mu_;
  std::string out_buf_;      // frames waiting to be written
  std::string write_buf_;    // frames being written, from write_off_ on
  size_t write_off_ = 0;
  size_t write_len_ = 0;     // the slice being written
  bool writing_ = false;
  bool flush_posted_ = false;
  bool closing_ = false;     // a fatal ERR is queued: write it, then close
  bool slow_ = false;
  bool warned_ = false;
  size_t max_pending_;
  // Producer flow control: a delivery that finds the queue past half of max_pending_ waits (briefly)
  // for this session's writes to bring it back, so that a consumer that reads, only slower than a
  // burst arrives, slows the burst down instead of being cut off. A consumer that makes no progress
  // during one wait is not waited for again until its queue has emptied.
  std::condition_variable drained_cv_;
  uint32_t stall_waiters_ = 0;
  uint64_t writes_done_ = 0;
  uint32_t idle_stalls_ = 0;  // consecutive waits that saw no progress (no write done, nothing acked)
  uint64_t acked_mark_ = 0;  // the peer's acknowledged bytes at the last look
  std::atomic<int> fd_{-1};  // the socket, for TCP_INFO; -1 once closed
  bool stall_spent_ = false;
  // Publishers on this session's own thread cannot wait for it; they pause reading instead, and
  // this session resumes them when its queue is back under half (under out_mu_).
  std::vector<std::weak_ptr<Session>> paced_publishers_;
  // As a publisher (this session's executor only): a delivery asked to pause after this read batch.
  std::vector<std::weak_ptr<Session>> pacing_consumers_;
  bool pace_requested_ = false;
  bool sub_pending_ = false;  // a SUB waits for the bus; later frames wait for it (executor only)
  bool paced_ = false;
  boost::asio::steady_timer pace_timer_;
  std::unordered_map<std::string, std::string> grants_;  // visible reply subject → bus subject
  std::deque<std::string> grant_order_;
  uint64_t grant_seq_ = 0;

  std::atomic<size_t> sub_count_{0}, inflight_count_{0};
  std::atomic<uint64_t> msgs_in_{0}, msgs_out_{0}, bytes_in_{0}, bytes_out_{0};
};

}  // namespace busgate::gw
