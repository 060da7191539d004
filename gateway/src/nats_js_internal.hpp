#pragma once
// What the files of the JetStream implementation (nats_jetstream.hpp) share: the engine's state
// (NatsJetStream::Impl, one per bus), the answers of the JetStream JSON API, and the small
// functions they all use.
// The engine's work is spread over nats_js_api.cpp (API requests, streams and consumers),
// nats_js_config.cpp (applying the durable configuration), nats_js_open.cpp (opening a durable
// subscription), nats_js_sub.cpp (one subscription's pulls, deliveries and acknowledgements) and
// nats_jetstream.cpp (dispatch, timers, releases, dead letters, stored publishes).

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "nats_jetstream.hpp"
#include "nats_link.hpp"

namespace busgate::gw {

class JsSub;

namespace js {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using namespace std::literals;
using proto::Code;

constexpr uint64_t kApiSid = NatsJetStream::kSidBase;
constexpr auto kApiTimeout = 5s;     // a JetStream API answer, or a PubAck
// A pull request's life on the server, and the idle heartbeat it asks for: the server sends a
// status 100 on the inbox at least that often while the request waits, so a request lost with a
// server (a restart, a cluster failover) is noticed after kStallBeats heartbeats of silence. The
// expiry is long because a request that expires just as a redelivery is handed out can cost that
// redelivery (see JsSub). Until the server has sent a heartbeat (one that ignores the field sends
// none), and with servers that refuse heartbeats in pull requests, requests expire after
// kPullExpiresNoBeat and a lost one is noticed kStallGrace after it should have expired.
constexpr auto kPullExpires = 30s;
constexpr auto kPullHeartbeat = 1s;
constexpr int kStallBeats = 2;
constexpr auto kPullExpiresNoBeat = 5s;
constexpr auto kStallGrace = 2s;
constexpr auto kRetireFor = 5s;      // a replaced inbox still releases stragglers this long
constexpr auto kPullRetry = 1s;      // after a refused pull request
constexpr auto kDeadLetterRetry = 5s;  // NAK delay when a dead letter could not be stored
constexpr auto kTick = 100ms;
constexpr auto kStatsTtl = 1s;
constexpr auto kStatsWait = 200ms;
constexpr auto kRetryFirst = 1s;
constexpr auto kRetryUnanswered = 5s;  // JetStream not answering (yet): retried at least this often
constexpr auto kRetryMax = 30s;
constexpr auto kReapplyEvery = 5s;

// JetStream API err_code values.
constexpr int kConsumerNotFound = 10014;
constexpr int kStreamNameInUse = 10058;
constexpr int kStreamNotFound = 10059;

int64_t to_ns(uint64_t ms);
template <class D>
int64_t to_ns(D d) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
}
// A decimal number, all of `s`.
bool to_u64(std::string_view s, uint64_t& v);
// The status of a NATS header block ("NATS/1.0 408 Request Timeout"): its code (0 for none) and
// description; `pending`: the Nats-Pending-Messages value, -1 when absent.
int parse_status(std::string_view block, std::string_view* what = nullptr, int64_t* pending = nullptr);
// The key of a consumer in the statistics and in the delivery holders.
std::string stat_key(std::string_view stream_bus, std::string_view consumer);

// One answer to a JetStream API request (or a stored publish).
struct ApiReply {
  enum class Kind { answer, no_responders, timeout, down } kind = Kind::answer;
  json body;             // the answer, parsed (a discarded value when it is not JSON)
  int err_code = 0;      // JetStream's err_code when the answer is an error
  bool transient = false;  // an error JetStream reports as temporary (code 503)
  std::string error;     // the error's description; empty on success
  Code link_code = Code::ok;  // kind down: what the link said

  bool answered() const { return kind == Kind::answer && !transient; }
  bool ok() const { return kind == Kind::answer && error.empty(); }
  std::string describe() const {
    switch (kind) {
      case Kind::answer: return error;
      case Kind::no_responders: return "JetStream does not answer on this NATS server (not enabled?)";
      case Kind::timeout: return "JetStream did not answer within 5 s";
      case Kind::down: return "the NATS connection is down";
    }
    return error;
  }
};
// Returns false when the message was not the answer (something else replied): keep waiting.
using ApiFn = std::function<bool(ApiReply&)>;

inline bool is_puback(const ApiReply& r) {
  return r.body.is_object() && (r.body.contains("stream") || r.body.contains("error"));
}

struct StatEntry {
  std::string tenant, stream, consumer, stream_bus;
  bool declared = false;
  uint32_t max_inflight = 0;
  uint64_t pending = 0, ack_pending = 0, redelivered = 0, dead_lettered = 0;
  Clock::time_point fetched{};
  bool fetching = false;
};

}  // namespace js

struct NatsJetStream::Impl : std::enable_shared_from_this<Impl> {
  using Clock = js::Clock;
  using json = js::json;
  using ApiReply = js::ApiReply;
  using ApiFn = js::ApiFn;
  using StatEntry = js::StatEntry;

  Impl(NatsLink& l, std::string p) : link(l), prefix(std::move(p)), api_prefix(prefix + "a.") {}

  NatsLink& link;
  const std::string prefix;      // "_INBOX.<node>.js."
  const std::string api_prefix;  // API answers: prefix + "a.<token>"
  std::atomic<uint64_t> next_sid{kSidBase + 1};
  std::atomic<uint64_t> next_token{1};
  std::atomic<std::thread::id> link_thread{};

  // ---- API requests waiting for an answer
  struct Waiting {
    ApiFn fn;
    Clock::time_point deadline;
  };
  std::mutex api_mu;
  std::unordered_map<uint64_t, Waiting> waiting;

  // ---- configuration
  struct Round {
    uint64_t id = 0;
    std::atomic<int> left{1};
    std::atomic<bool> answered{true}, ok{true};
  };
  std::mutex cfg_mu;
  std::vector<StreamSpec> streams;
  std::vector<ConsumerSpec> consumers;
  bool configured = false;
  uint64_t round = 0;
  std::optional<Clock::time_point> retry_at;
  Clock::time_point last_reapply{};
  Clock::duration retry_wait = js::kRetryFirst;
  std::map<std::string, std::string> failures;  // item → the failure last logged
  std::atomic<bool> applied{true};

  // ---- consumers being checked (and re-created when missing): key → waiters
  using EnsureFn = std::function<void(bool ok, const std::string& why)>;
  std::mutex ensure_mu;
  std::map<std::string, std::vector<EnsureFn>> ensuring;

  // ---- subscriptions
  struct Route {
    std::shared_ptr<JsSub> sub;
    bool retired = false;
    Clock::time_point until{};
  };
  std::mutex subs_mu;
  std::unordered_map<uint64_t, Route> routes;  // NATS sid → subscription
  std::unordered_set<std::shared_ptr<JsSub>> live;

  // ---- which subscription of this node holds a delivery: stat_key → stream sequence → holder
  struct Holder {
    JsSub* raw = nullptr;
    std::weak_ptr<JsSub> sub;
  };
  std::mutex hold_mu;
  std::unordered_map<std::string, std::unordered_map<uint64_t, Holder>> holders;

  // ---- deliveries released by closed subscriptions, waiting for the waiting-request purge
  struct Release {
    std::atomic<bool> sent{false};
    std::vector<std::string> acks;
  };
  std::mutex rel_mu;
  std::unordered_set<std::shared_ptr<Release>> releases;

  // False once a server refused a pull request with an idle heartbeat (pulls then expire sooner).
  std::atomic<bool> heartbeats{true};
  // True once the server (since the last connect) sent an idle heartbeat to a pull request.
  std::atomic<bool> heard_beat{false};
  std::atomic<bool> stopped{false};

  // ---- statistics
  std::mutex stats_mu;
  std::condition_variable stats_cv;
  std::map<std::string, StatEntry> stats;  // stat_key → entry

  // ---- timer thread
  std::mutex tick_mu;
  std::condition_variable tick_cv;
  bool stopping = false;
  std::thread ticker;

  void start_ticker();
  void stop();

  // ---------------------------------------------------------------- requests

  // Publishes with a reply subject in the API inbox; `fn` gets the answer, a timeout or the link's
  // refusal, once (unless it returns false for a message that was not the answer). `now`: written
  // from this thread when the link is idle (API calls); otherwise with the link's next batch (stored
  // publishes: a client's PUBs of one read go out in one write).
  void request(std::string_view subject, std::string_view headers, std::string_view payload, ApiFn fn, bool now = true);
  void api(const std::string& subject, const json& body, ApiFn fn);
  void on_api(const NatsInbound& m);
  void fail_waiting(ApiReply::Kind kind);

  // ---------------------------------------------------------------- streams and consumers

  void create_stream(const StreamSpec& s, std::function<void(ApiReply&)> done);
  void create_consumer(const ConsumerSpec& c, std::function<void(ApiReply&)> done);
  void consumer_info(const std::string& stream_bus, const std::string& name, std::function<void(ApiReply&)> done);
  std::optional<StreamSpec> stream_spec_of(const std::string& bus_name);

  // True when a configured stream stores `subject`.
  bool stored_subject(std::string_view subject);

  // Makes sure the consumer exists (re-created from `spec`, with its stream when that is known and
  // missing, e.g. after a restart of a server with memory storage). Concurrent calls for one
  // consumer share one check.
  void ensure_consumer(const ConsumerSpec& spec, EnsureFn fn);

  // ---------------------------------------------------------------- configuration

  void note(const std::shared_ptr<Round>& rd, const std::string& item, const ApiReply& r);
  void done(const std::shared_ptr<Round>& rd);

  // Creates or updates every configured stream, then its consumers. Idempotent.
  void apply();
  void apply_consumer(const std::shared_ptr<Round>& rd, const ConsumerSpec& c);
  void configure(std::vector<StreamSpec> ss, std::vector<ConsumerSpec> cs);

  // A stored publish found no stream: the configuration is applied again (soon, at most every
  // few seconds), in case a stream was lost (memory storage on a restarted server) or deleted.
  void reapply_soon();
  void prune_stats();

  // ---------------------------------------------------------------- dispatch

  void on_message(const NatsInbound& m);
  void on_event(std::string_view what);
  void tick();

  void nak_raw(std::string_view ack) { link.publish(ack, {}, {}, "-NAK", true); }

  // Releases (NAKs) deliveries of a subscription that ended with pull requests still waiting on the
  // server for its inbox, once JetStream has dropped those requests (see JsSub::close).
  void release_after_purge(const ConsumerSpec& spec, std::vector<std::string> acks);
  void release_now(const std::shared_ptr<Release>& rel);

  // A delivery of stream sequence `sseq` of consumer `key` reached `by` (kept: `by` hands it to its
  // client). Returns the other subscription of this node that held an earlier delivery of it: that
  // delivery is over (the server redelivered it), and the caller tells it so.
  std::shared_ptr<JsSub> hand_over(const std::string& key, uint64_t sseq, const std::shared_ptr<JsSub>& by, bool keep);

  // `by` no longer holds a delivery of `sseq` (settled, expired, released).
  void let_go(const std::string& key, uint64_t sseq, const JsSub* by);
  void route(uint64_t sid, const std::shared_ptr<JsSub>& sub);
  void retire(uint64_t sid);

  // Counters of what this node did (JetStream's own num_redelivered counts only the redelivered
  // messages still unacknowledged).
  void count(const ConsumerSpec& spec, bool dead);

  void dead_letter(const std::shared_ptr<JsSub>& sub, const BusMessagePtr& msg, const std::string& ack,
                   const std::string& reason, uint32_t attempts);

  // ---------------------------------------------------------------- subscribing

  struct Opening {
    ConsumerSpec spec;
    DurableWindow window;
    uint32_t max_client_consumers = 0;
    std::shared_ptr<DurableSink> sink;
    DurableReadyFn ready;
  };
  void subscribe(std::shared_ptr<Opening> o);
  void create_for(const std::shared_ptr<Opening>& o);
  void open(const std::shared_ptr<Opening>& o, const json& info);
  void count_client_consumers(const std::string& tenant, const std::string& also_stream,
                              std::function<void(bool ok, uint64_t n, std::string why)> done);
};

}  // namespace busgate::gw
