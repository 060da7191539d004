#include "nats_jetstream.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "busgate/protocol/subject.hpp"
#include "nats_bus.hpp"
#include "nats_link.hpp"

namespace busgate::gw {

using proto::Code;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using namespace std::literals;

namespace {

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

int64_t to_ns(uint64_t ms) {
  constexpr uint64_t kMaxMs = static_cast<uint64_t>(INT64_MAX) / 1000000;
  return static_cast<int64_t>(std::min(ms, kMaxMs) * 1000000);
}

template <class D>
int64_t to_ns(D d) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
}

bool to_u64(std::string_view s, uint64_t& v) {
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  return ec == std::errc{} && p == s.data() + s.size() && !s.empty();
}

// The delivery count and stream sequence of a $JS.ACK reply subject: $JS.ACK.<stream>.<consumer>.
// <delivered>.<sseq>.<cseq>.<ts>.<pending>, or the longer form with the domain and account hash
// after ACK (and an optional trailing token).
bool parse_ack(std::string_view reply, uint32_t& delivered, uint64_t& sseq) {
  std::string_view tok[14];
  size_t n = 0;
  while (n < 14) {
    const size_t dot = reply.find('.');
    tok[n++] = reply.substr(0, dot);
    if (dot == std::string_view::npos) break;
    reply.remove_prefix(dot + 1);
  }
  if (n < 2 || tok[0] != "$JS" || tok[1] != "ACK") return false;
  size_t at = 0;
  if (n == 9) at = 4;
  else if (n == 11 || n == 12) at = 6;
  else return false;
  uint64_t v = 0;
  if (!to_u64(tok[at], v) || v == 0 || !to_u64(tok[at + 1], sseq)) return false;
  delivered = static_cast<uint32_t>(std::min<uint64_t>(v, UINT32_MAX));
  return true;
}

// The status of a NATS header block ("NATS/1.0 408 Request Timeout"): its code (0 for none) and
// description; `pending`: the Nats-Pending-Messages value, -1 when absent.
int parse_status(std::string_view block, std::string_view* what = nullptr, int64_t* pending = nullptr) {
  if (pending) *pending = -1;
  if (!block.starts_with("NATS/1.0")) return 0;
  std::string_view line = block.substr(8, block.find('\n') - std::min<size_t>(8, block.find('\n')));
  while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.remove_suffix(1);
  while (!line.empty() && line.front() == ' ') line.remove_prefix(1);
  const size_t sp = line.find(' ');
  uint64_t code = 0;
  if (!to_u64(line.substr(0, sp), code)) return 0;
  if (what) *what = sp == std::string_view::npos ? std::string_view{} : line.substr(sp + 1);
  if (pending) {
    constexpr std::string_view key = "Nats-Pending-Messages:";
    if (const size_t p = block.find(key); p != std::string_view::npos) {
      std::string_view v = block.substr(p + key.size());
      while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
      size_t e = 0;
      while (e < v.size() && v[e] >= '0' && v[e] <= '9') ++e;
      uint64_t n = 0;
      if (to_u64(v.substr(0, e), n)) *pending = static_cast<int64_t>(std::min<uint64_t>(n, INT64_MAX));
    }
  }
  return static_cast<int>(code);
}

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

bool is_puback(const ApiReply& r) {
  return r.body.is_object() && (r.body.contains("stream") || r.body.contains("error"));
}

std::string stat_key(std::string_view stream_bus, std::string_view consumer) {
  std::string k(stream_bus);
  k.push_back(' ');
  k.append(consumer);
  return k;
}

json stream_config(const StreamSpec& s) {
  uint64_t dup = s.duplicate_window_ms;
  if (s.max_age_ms > 0 && dup > s.max_age_ms) dup = s.max_age_ms;  // JetStream requires it
  json c = {{"name", s.bus_name},
            {"subjects", s.subjects},
            {"retention", s.workqueue ? "workqueue" : "limits"},
            {"storage", s.file_storage ? "file" : "memory"},
            {"num_replicas", std::max<uint32_t>(1, s.replicas)},
            {"max_age", to_ns(s.max_age_ms)},
            {"max_bytes", s.max_bytes > 0 ? s.max_bytes : -1},
            {"max_msgs", s.max_msgs > 0 ? s.max_msgs : -1},
            {"discard", s.workqueue ? "new" : "old"}};
  if (dup > 0) c["duplicate_window"] = to_ns(dup);
  return c;
}

json consumer_request(const ConsumerSpec& c) {
  json cfg = {{"durable_name", c.name},
              {"ack_policy", "explicit"},
              {"ack_wait", to_ns(c.ack_wait_ms)},
              {"max_ack_pending", std::max<uint32_t>(1, c.max_inflight)},
              {"deliver_policy", c.deliver_all ? "all" : "new"},
              {"max_deliver", -1},  // the gateway counts attempts and dead-letters itself
              {"replay_policy", "instant"}};
  if (!c.filter.empty()) cfg["filter_subject"] = c.filter;
  return json{{"stream_name", c.stream_bus}, {"config", std::move(cfg)}};
}

}  // namespace

// ------------------------------------------------------------------------------------------------

class JsSub;

struct StatEntry {
  std::string tenant, stream, consumer, stream_bus;
  bool declared = false;
  uint32_t max_inflight = 0;
  uint64_t pending = 0, ack_pending = 0, redelivered = 0, dead_lettered = 0;
  Clock::time_point fetched{};
  bool fetching = false;
};

struct NatsJetStream::Impl : std::enable_shared_from_this<Impl> {
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
  Clock::duration retry_wait = kRetryFirst;
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

  void start_ticker() {
    ticker = std::thread([this] {
      std::unique_lock lk(tick_mu);
      while (!stopping) {
        tick_cv.wait_for(lk, kTick);
        if (stopping) break;
        lk.unlock();
        tick();
        lk.lock();
      }
    });
  }

  void stop() {
    {
      std::lock_guard lk(tick_mu);
      if (stopping) return;
      stopping = true;
      tick_cv.notify_all();
    }
    if (ticker.joinable()) ticker.join();
    stopped = true;
    // Releases still waiting for their purge go out now, while the link is there.
    std::vector<std::shared_ptr<Release>> rel;
    {
      std::lock_guard lk(rel_mu);
      rel.assign(releases.begin(), releases.end());
    }
    for (auto& r : rel) release_now(r);
    // Break the reference cycles (callbacks and routes hold the engine and its subscriptions).
    std::unordered_map<uint64_t, Waiting> w;
    std::unordered_map<uint64_t, Route> r;
    std::unordered_set<std::shared_ptr<JsSub>> l;
    {
      std::lock_guard lk(api_mu);
      w.swap(waiting);
    }
    {
      std::lock_guard lk(subs_mu);
      r.swap(routes);
      l.swap(live);
    }
  }

  // ---------------------------------------------------------------- requests

  // Publishes with a reply subject in the API inbox; `fn` gets the answer, a timeout or the link's
  // refusal, once (unless it returns false for a message that was not the answer). `now`: written
  // from this thread when the link is idle (API calls); otherwise with the link's next batch (stored
  // publishes: a client's PUBs of one read go out in one write).
  void request(std::string_view subject, std::string_view headers, std::string_view payload, ApiFn fn,
               bool now = true) {
    const uint64_t token = next_token.fetch_add(1);
    const std::string reply = api_prefix + std::to_string(token);
    {
      std::lock_guard lk(api_mu);
      waiting.emplace(token, Waiting{std::move(fn), Clock::now() + kApiTimeout});
    }
    const Code c = link.publish(subject, reply, headers, payload, now);
    if (c == Code::ok) return;
    ApiFn f;
    {
      std::lock_guard lk(api_mu);
      auto it = waiting.find(token);
      if (it == waiting.end()) return;
      f = std::move(it->second.fn);
      waiting.erase(it);
    }
    ApiReply r;
    r.kind = ApiReply::Kind::down;
    r.link_code = c;
    f(r);
  }

  void api(const std::string& subject, const json& body, ApiFn fn) {
    request(subject, {}, body.is_null() ? std::string() : body.dump(), std::move(fn));
  }

  void on_api(const NatsInbound& m) {
    uint64_t token = 0;
    if (!m.subject.starts_with(api_prefix) || !to_u64(m.subject.substr(api_prefix.size()), token)) return;
    Waiting w;
    {
      std::lock_guard lk(api_mu);
      auto it = waiting.find(token);
      if (it == waiting.end()) return;  // late, or already answered
      w = std::move(it->second);
      waiting.erase(it);
    }
    ApiReply r;
    if (parse_status(m.headers) == 503 && m.payload.empty()) {
      r.kind = ApiReply::Kind::no_responders;
    } else {
      r.body = json::parse(m.payload, nullptr, false);
      if (!r.body.is_object()) {
        r.error = "not a JetStream answer";
      } else if (auto e = r.body.find("error"); e != r.body.end()) {
        r.err_code = e->is_object() ? e->value("err_code", 0) : 0;
        r.transient = e->is_object() && e->value("code", 0) == 503;
        r.error = e->is_object() ? e->value("description", std::string()) : std::string();
        if (r.error.empty()) r.error = "JetStream error " + std::to_string(r.err_code);
      }
    }
    if (!w.fn(r)) {
      std::lock_guard lk(api_mu);
      waiting.emplace(token, std::move(w));
    }
  }

  void fail_waiting(ApiReply::Kind kind) {
    std::vector<ApiFn> fns;
    {
      std::lock_guard lk(api_mu);
      const auto now = Clock::now();
      for (auto it = waiting.begin(); it != waiting.end();) {
        if (kind == ApiReply::Kind::down || it->second.deadline <= now) {
          fns.push_back(std::move(it->second.fn));
          it = waiting.erase(it);
        } else {
          ++it;
        }
      }
    }
    for (auto& f : fns) {
      ApiReply r;
      r.kind = kind;
      r.link_code = Code::bus_unavailable;
      f(r);
    }
  }

  // ---------------------------------------------------------------- streams and consumers

  void create_stream(const StreamSpec& s, std::function<void(ApiReply&)> done) {
    auto cfg = std::make_shared<json>(stream_config(s));
    auto self = shared_from_this();
    api("$JS.API.STREAM.CREATE." + s.bus_name, *cfg, [self, cfg, name = s.bus_name, done](ApiReply& r) {
      if (r.err_code != kStreamNameInUse) {
        done(r);
        return true;
      }
      // It exists with another configuration: update it.
      self->api("$JS.API.STREAM.UPDATE." + name, *cfg, [done](ApiReply& r2) {
        done(r2);
        return true;
      });
      return true;
    });
  }

  void create_consumer(const ConsumerSpec& c, std::function<void(ApiReply&)> done) {
    api("$JS.API.CONSUMER.DURABLE.CREATE." + c.stream_bus + "." + c.name, consumer_request(c),
        [done](ApiReply& r) {
          done(r);
          return true;
        });
  }

  void consumer_info(const std::string& stream_bus, const std::string& name, std::function<void(ApiReply&)> done) {
    api("$JS.API.CONSUMER.INFO." + stream_bus + "." + name, json(), [done](ApiReply& r) {
      done(r);
      return true;
    });
  }

  std::optional<StreamSpec> stream_spec_of(const std::string& bus_name) {
    std::lock_guard lk(cfg_mu);
    for (const auto& s : streams)
      if (s.bus_name == bus_name) return s;
    return std::nullopt;
  }

  // True when a configured stream stores `subject`.
  bool stored_subject(std::string_view subject) {
    std::lock_guard lk(cfg_mu);
    for (const auto& s : streams)
      for (const auto& p : s.subjects)
        if (proto::subject_matches(p, subject)) return true;
    return false;
  }

  // Makes sure the consumer exists (re-created from `spec`, with its stream when that is known and
  // missing, e.g. after a restart of a server with memory storage). Concurrent calls for one
  // consumer share one check.
  void ensure_consumer(const ConsumerSpec& spec, EnsureFn fn) {
    const std::string key = stat_key(spec.stream_bus, spec.name);
    {
      std::lock_guard lk(ensure_mu);
      auto& v = ensuring[key];
      v.push_back(std::move(fn));
      if (v.size() > 1) return;
    }
    auto self = shared_from_this();
    auto finish = [self, key](bool ok, const std::string& why) {
      std::vector<EnsureFn> fns;
      {
        std::lock_guard lk(self->ensure_mu);
        auto it = self->ensuring.find(key);
        if (it != self->ensuring.end()) {
          fns.swap(it->second);
          self->ensuring.erase(it);
        }
      }
      for (auto& f : fns) f(ok, why);
    };
    consumer_info(spec.stream_bus, spec.name, [self, spec, finish](ApiReply& r) {
      if (r.ok()) return finish(true, {});
      if (!r.answered()) return finish(false, r.describe());
      auto create = [self, spec, finish] {
        self->create_consumer(spec, [self, spec, finish](ApiReply& r2) {
          if (r2.ok()) spdlog::info("jetstream: consumer {} of stream {} re-created", spec.name, spec.stream_bus);
          finish(r2.ok(), r2.describe());
        });
      };
      if (r.err_code == kConsumerNotFound) return create();
      if (r.err_code == kStreamNotFound) {
        const auto s = self->stream_spec_of(spec.stream_bus);
        if (!s) return finish(false, r.describe());
        return self->create_stream(*s, [self, create, finish, name = s->bus_name](ApiReply& r2) {
          if (!r2.ok()) return finish(false, r2.describe());
          spdlog::info("jetstream: stream {} re-created", name);
          create();
        });
      }
      finish(false, r.describe());
    });
  }

  // ---------------------------------------------------------------- configuration

  void note(const std::shared_ptr<Round>& rd, const std::string& item, const ApiReply& r) {
    if (!r.answered()) rd->answered = false;
    if (!r.ok()) rd->ok = false;
    std::lock_guard lk(cfg_mu);
    if (!r.ok()) {
      const std::string why = r.describe();
      auto& last = failures[item];
      if (last != why) {
        spdlog::error("jetstream: cannot configure {}: {} (retrying)", item, why);
        last = why;
      }
    } else if (failures.erase(item)) {
      spdlog::info("jetstream: {} configured", item);
    }
  }

  void done(const std::shared_ptr<Round>& rd) {
    if (rd->left.fetch_sub(1) != 1) return;
    std::lock_guard lk(cfg_mu);
    if (rd->id != round) return;  // a newer round runs
    if (rd->answered && !applied.load()) {
      applied = true;
      spdlog::info("jetstream: durable configuration applied ({} streams, {} consumers{})", streams.size(),
                   consumers.size(), rd->ok ? "" : "; some failed, see above");
    }
    if (rd->ok && rd->answered) {
      retry_wait = kRetryFirst;
      return;
    }
    retry_at = Clock::now() + retry_wait;
    const auto cap = rd->answered ? kRetryMax : std::chrono::duration_cast<Clock::duration>(kRetryUnanswered);
    retry_wait = std::min<Clock::duration>(retry_wait * 2, cap);
  }

  // Creates or updates every configured stream, then its consumers. Idempotent.
  void apply() {
    std::vector<StreamSpec> ss;
    std::vector<ConsumerSpec> cs;
    auto rd = std::make_shared<Round>();
    {
      std::lock_guard lk(cfg_mu);
      if (!configured) return;
      retry_at.reset();
      rd->id = ++round;
      ss = streams;
      cs = consumers;
    }
    if (!link.connected()) return;  // the link's connect event applies it
    auto self = shared_from_this();
    std::set<std::string> known;
    for (const auto& s : ss) {
      known.insert(s.bus_name);
      std::vector<ConsumerSpec> mine;
      for (const auto& c : cs)
        if (c.stream_bus == s.bus_name) mine.push_back(c);
      rd->left.fetch_add(1);
      create_stream(s, [self, rd, s, mine = std::move(mine)](ApiReply& r) {
        self->note(rd, "stream " + s.bus_name, r);
        if (r.ok())
          for (const auto& c : mine) self->apply_consumer(rd, c);
        self->done(rd);
      });
    }
    for (const auto& c : cs)
      if (!known.count(c.stream_bus)) apply_consumer(rd, c);
    done(rd);
  }

  void apply_consumer(const std::shared_ptr<Round>& rd, const ConsumerSpec& c) {
    rd->left.fetch_add(1);
    auto self = shared_from_this();
    create_consumer(c, [self, rd, item = "consumer " + c.name + " of stream " + c.stream_bus](ApiReply& r) {
      self->note(rd, item, r);
      self->done(rd);
    });
  }

  void configure(std::vector<StreamSpec> ss, std::vector<ConsumerSpec> cs) {
    {
      std::lock_guard lk(cfg_mu);
      configured = !ss.empty() || !cs.empty();
      if (configured && round == 0) applied = false;  // not ready before the first answers
      streams = std::move(ss);
      consumers = std::move(cs);
      retry_wait = kRetryFirst;
    }
    {
      std::lock_guard lk(cfg_mu);
      std::lock_guard sl(stats_mu);
      // Declared consumers get statistics entries; those no longer declared lose theirs unless
      // this node has subscribers on them.
      for (auto& [k, e] : stats) e.declared = false;
      for (const auto& c : consumers) {
        auto& e = stats[stat_key(c.stream_bus, c.name)];
        e.tenant = c.tenant;
        e.stream = c.stream;
        e.consumer = c.name;
        e.stream_bus = c.stream_bus;
        e.declared = true;
        if (!e.max_inflight) e.max_inflight = c.max_inflight;
      }
    }
    prune_stats();
    apply();
  }

  // A stored publish found no stream: the configuration is applied again (soon, at most every
  // few seconds), in case a stream was lost (memory storage on a restarted server) or deleted.
  void reapply_soon() {
    std::lock_guard lk(cfg_mu);
    const auto now = Clock::now();
    if (!configured || now - last_reapply < kReapplyEvery) return;
    last_reapply = now;
    if (!retry_at || *retry_at > now) retry_at = now;
  }

  void prune_stats();

  // ---------------------------------------------------------------- dispatch

  void on_message(const NatsInbound& m);
  void on_event(std::string_view what);
  void tick();

  void nak_raw(std::string_view ack) { link.publish(ack, {}, {}, "-NAK", true); }

  // Releases (NAKs) deliveries of a subscription that ended with pull requests still waiting on the
  // server for its inbox, once JetStream has dropped those requests (see JsSub::close).
  void release_after_purge(const ConsumerSpec& spec, std::vector<std::string> acks) {
    auto rel = std::make_shared<Release>();
    rel->acks = std::move(acks);
    if (stopped.load()) return release_now(rel);
    {
      std::lock_guard lk(rel_mu);
      releases.insert(rel);
    }
    auto self = shared_from_this();
    // CONSUMER.INFO makes the consumer drop its waiting requests whose inbox has no subscriber
    // (and the UNSUB went out before it on the same connection). Whatever the answer (or none in
    // time), the deliveries are released after it.
    consumer_info(spec.stream_bus, spec.name, [self, rel](ApiReply&) { self->release_now(rel); });
  }

  void release_now(const std::shared_ptr<Release>& rel) {
    if (rel->sent.exchange(true)) return;
    {
      std::lock_guard lk(rel_mu);
      releases.erase(rel);
    }
    for (const auto& a : rel->acks) nak_raw(a);
  }

  // A delivery of stream sequence `sseq` of consumer `key` reached `by` (kept: `by` hands it to its
  // client). Returns the other subscription of this node that held an earlier delivery of it: that
  // delivery is over (the server redelivered it), and the caller tells it so.
  std::shared_ptr<JsSub> hand_over(const std::string& key, uint64_t sseq, const std::shared_ptr<JsSub>& by,
                                   bool keep) {
    std::shared_ptr<JsSub> prev;
    std::lock_guard lk(hold_mu);
    auto& m = holders[key];
    auto it = m.find(sseq);
    if (it != m.end()) {
      if (it->second.raw != by.get()) prev = it->second.sub.lock();
      if (keep) it->second = Holder{by.get(), by};
      else m.erase(it);
    } else if (keep) {
      m.emplace(sseq, Holder{by.get(), by});
    }
    if (m.empty()) holders.erase(key);
    return prev;
  }

  // `by` no longer holds a delivery of `sseq` (settled, expired, released).
  void let_go(const std::string& key, uint64_t sseq, const JsSub* by) {
    std::lock_guard lk(hold_mu);
    auto k = holders.find(key);
    if (k == holders.end()) return;
    auto it = k->second.find(sseq);
    if (it == k->second.end() || it->second.raw != by) return;
    k->second.erase(it);
    if (k->second.empty()) holders.erase(k);
  }

  void route(uint64_t sid, const std::shared_ptr<JsSub>& sub) {
    std::lock_guard lk(subs_mu);
    routes[sid] = Route{sub, false, {}};
  }
  void retire(uint64_t sid) {
    if (!sid) return;
    std::lock_guard lk(subs_mu);
    auto it = routes.find(sid);
    if (it == routes.end()) return;
    it->second.retired = true;
    it->second.until = Clock::now() + kRetireFor;
  }

  // Counters of what this node did (JetStream's own num_redelivered counts only the redelivered
  // messages still unacknowledged).
  void count(const ConsumerSpec& spec, bool dead) {
    std::lock_guard lk(stats_mu);
    auto& e = stats[stat_key(spec.stream_bus, spec.name)];
    if (e.consumer.empty()) {
      e.tenant = spec.tenant;
      e.stream = spec.stream;
      e.consumer = spec.name;
      e.stream_bus = spec.stream_bus;
      e.max_inflight = spec.max_inflight;
    }
    ++(dead ? e.dead_lettered : e.redelivered);
  }

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

// ------------------------------------------------------------------------------------------------

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
 public:
  JsSub(std::weak_ptr<NatsJetStream::Impl> js, ConsumerSpec s, DurableWindow w, std::shared_ptr<DurableSink> sink,
        uint64_t ack_wait_ms, uint64_t max_ack_pending)
      : spec(std::move(s)),
        js_(std::move(js)),
        sink_(std::move(sink)),
        credit_(w.credit_mode),
        ack_wait_(std::chrono::milliseconds(std::max<uint64_t>(ack_wait_ms, 1))),
        key_(stat_key(spec.stream_bus, spec.name)) {
    uint64_t lim = w.limit ? w.limit : (max_ack_pending ? max_ack_pending : 1);
    if (max_ack_pending) lim = std::min<uint64_t>(lim, max_ack_pending);
    limit_ = std::max<uint64_t>(lim, 1);
    next_subject_ = "$JS.API.CONSUMER.MSG.NEXT." + spec.stream_bus + "." + spec.name;
  }

  const ConsumerSpec spec;

  // Subscribes the first inbox (before the subscription is handed out).
  void attach() {
    auto js = js_.lock();
    if (!js) return;
    std::lock_guard lk(mu_);
    relink_locked(*js);
  }

  void start() override {
    {
      std::lock_guard lk(mu_);
      started_ = true;
    }
    pull();
  }

  void add_credit(uint64_t n) override {
    {
      std::lock_guard lk(mu_);
      credits_ = credits_ > UINT64_MAX - n ? UINT64_MAX : credits_ + n;
    }
    pull();
  }

  bool ack(uint64_t id) override {
    std::string ack;
    if (!take(id, ack, nullptr, nullptr)) return false;
    send(ack, "+ACK");
    pull();
    return true;
  }

  bool nak(uint64_t id, uint64_t delay_ms) override {
    std::string ack;
    uint32_t attempt = 0;
    if (!take(id, ack, &attempt, nullptr)) return false;
    const uint64_t d = delay_ms ? delay_ms : spec.backoff_for(attempt);
    send(ack, nak_body(std::chrono::milliseconds(d)));
    pull();
    return true;
  }

  bool progress(uint64_t id) override {
    std::string ack;
    bool expired = false;
    uint64_t sseq = 0;
    {
      std::lock_guard lk(mu_);
      auto it = out_.find(id);
      if (it == out_.end()) return false;
      const auto now = Clock::now();
      if (it->second.deadline <= now) {
        expired = true;
        sseq = it->second.sseq;
        by_seq_.erase(sseq);
        out_.erase(it);
      } else {
        it->second.deadline = now + ack_wait_;
        ack = it->second.ack;
      }
    }
    if (expired) {
      let_go(sseq);
      pull();
      return false;
    }
    send(ack, "+WPI");
    return true;
  }

  bool term(uint64_t id, const std::string& reason) override {
    std::string ack;
    uint32_t attempt = 0;
    BusMessagePtr msg;
    if (!take(id, ack, &attempt, &msg)) return false;
    if (auto js = js_.lock())
      js->dead_letter(shared_from_this(), msg, ack, reason.empty() ? "terminated" : "terminated: " + reason, attempt);
    pull();
    return true;
  }

  void close() override {
    std::vector<std::string> release;
    std::vector<uint64_t> seqs;
    uint64_t sid = 0;
    bool waiting = false;
    {
      std::lock_guard lk(mu_);
      if (closed_) return;
      closed_ = true;
      const auto now = Clock::now();
      for (auto& [id, o] : out_) {
        seqs.push_back(o.sseq);
        // An expired delivery is the server's again: a NAK on its ack subject would queue the
        // message a second time while its redelivery is out.
        if (o.deadline > now) release.push_back(std::move(o.ack));
      }
      out_.clear();
      by_seq_.clear();
      sid = sid_;
      sid_ = 0;
      waiting = requested_ > 0 || replaced_waiting_;
      requested_ = 0;
    }
    auto js = js_.lock();
    if (!js) return;
    for (const uint64_t q : seqs) js->let_go(key_, q, this);
    // The inbox goes first, then (when pull requests were waiting for it) the consumer is made to
    // drop them, then the deliveries are released and go to other subscribers. Messages already on
    // their way to the inbox are released as they arrive (the retired route).
    js->retire(sid);
    if (sid) js->link.unsubscribe(sid);
    if (waiting) {
      js->release_after_purge(spec, std::move(release));
    } else {
      for (const auto& a : release) js->nak_raw(a);
    }
    std::lock_guard lk(js->subs_mu);
    js->live.erase(shared_from_this());
  }

  uint32_t outstanding() const override {
    std::lock_guard lk(mu_);
    return static_cast<uint32_t>(out_.size());
  }

  // ---- engine side

  // A message delivered on this subscription's inbox (`current`: the inbox in use, not a replaced
  // one).
  void on_msg(const NatsInbound& m, bool current) {
    auto js = js_.lock();
    if (!js) return;
    uint32_t attempt = 0;
    uint64_t sseq = 0;
    if (!parse_ack(m.reply, attempt, sseq)) {
      spdlog::warn("jetstream: a delivery for consumer {} with an unexpected reply subject '{}'", spec.name,
                   m.reply.substr(0, 128));
      return;
    }
    thread_local std::string headers;
    from_nats_headers(m.headers, headers, true);
    auto msg = std::make_shared<const BusMessage>(m.subject, std::string_view{}, headers, m.payload);
    std::string ack(m.reply);
    enum { deliver, release, dead } what = deliver;
    uint64_t id = 0;
    {
      std::lock_guard lk(mu_);
      if (current) {
        if (requested_ > 0) --requested_;
        last_heard_ = Clock::now();
      }
      // A redelivery of a message this subscription still holds: the server's ack wait ran out
      // before the local one did, so the earlier delivery is over.
      if (auto it = by_seq_.find(sseq); it != by_seq_.end()) {
        out_.erase(it->second);
        by_seq_.erase(it);
      }
      if (closed_ || !current || !started_) {
        what = release;
      } else if (out_.size() >= limit_ || (credit_ && credits_ == 0)) {
        what = release;  // more than asked for (cannot happen unless the server's bookkeeping and ours differ)
        spdlog::debug("jetstream: consumer {}: a delivery beyond the window, released", spec.name);
      } else if (attempt > spec.max_deliveries) {
        what = dead;
      } else {
        id = next_id_++;
        if (credit_) --credits_;
        out_.emplace(id, Out{ack, attempt, msg, Clock::now() + ack_wait_, sseq});
        by_seq_[sseq] = id;
      }
    }
    // The server delivered the message again: whichever other subscription of this node held an
    // earlier delivery of it holds it no longer (before this one reaches its client).
    if (auto prev = js->hand_over(key_, sseq, shared_from_this(), what == deliver)) prev->forget(sseq);
    if (what == release) return js->nak_raw(ack);
    if (what == dead) {
      js->dead_letter(shared_from_this(), msg, ack, "max_deliveries", attempt - 1);
      return pull();
    }
    if (attempt > 1) js->count(spec, false);
    if (!sink_->on_durable(msg, id, attempt)) {
      bool erased = false;
      {
        std::lock_guard lk(mu_);
        erased = erase_locked(id);
        if (erased && credit_) ++credits_;
      }
      if (erased) {
        let_go(sseq);
        js->nak_raw(ack);
      }
    }
    pull();
  }

  // Another subscription of this node got a delivery of `sseq`: this one's is over.
  void forget(uint64_t sseq) {
    {
      std::lock_guard lk(mu_);
      auto it = by_seq_.find(sseq);
      if (it == by_seq_.end()) return;
      out_.erase(it->second);
      by_seq_.erase(it);
    }
    pull();
  }

  // A status message on the inbox: an idle heartbeat (100), a pull request ended (408) or was
  // refused.
  void on_status(const NatsInbound& m) {
    auto js = js_.lock();
    if (!js) return;
    std::string_view what;
    int64_t pending = -1;
    const int code = parse_status(m.headers, &what, &pending);
    if (code == 100) js->heard_beat = true;
    bool expired = false, refused_beats = false;
    {
      std::lock_guard lk(mu_);
      last_heard_ = Clock::now();
      if (code == 100) {
        quick_stall_ = beats_;  // the server sends heartbeats: their silence means the requests are gone
        return;
      }
      if (code == 408 && pending >= 0) {  // a request expired, with this much of it not delivered
        requested_ -= std::min<uint64_t>(requested_, static_cast<uint64_t>(pending));
        expired = true;
      } else {
        spdlog::debug("jetstream: consumer {}: pull answered {} {}", spec.name, code, what);
        refused_beats = code == 400 && beats_;
      }
    }
    if (expired) return pull();
    if (refused_beats && js->heartbeats.exchange(false))
      spdlog::warn("jetstream: the NATS server refuses idle heartbeats in pull requests ({}); lost pull requests "
                   "are noticed after {} s instead",
                   what, std::chrono::duration_cast<std::chrono::seconds>(kPullExpiresNoBeat + kStallGrace).count());
    // Which request ended is not known: start over on a new inbox. No responders (no consumer, or
    // no leader for it yet) or a deleted consumer: check it too. A new consumer leader: at once.
    const bool missing =
        code == 503 || code == 404 || (code == 409 && what.find("Deleted") != std::string_view::npos);
    const bool leader = code == 409 && what.find("Leadership") != std::string_view::npos;
    recover(missing, !leader);
  }

  // Pulls again on a fresh inbox (whatever was requested on the old one is lost or refused), at
  // once or after kPullRetry (`wait`). With `check`, the consumer is also checked and re-created if
  // it is missing (after a reconnect: a restarted server with memory storage), without holding the
  // pulls back: during a cluster failover the check may wait for a new leader as long as a pull.
  void recover(bool check, bool wait) {
    auto js = js_.lock();
    if (!js) return;
    bool start_check = false;
    {
      std::lock_guard lk(mu_);
      if (closed_) return;
      relink_locked(*js);
      if (wait) pull_after_ = Clock::now() + kPullRetry;
      if (check && !checking_) start_check = checking_ = true;
    }
    if (start_check) {
      auto self = shared_from_this();
      js->ensure_consumer(spec, [self](bool ok, const std::string& why) {
        {
          std::lock_guard lk(self->mu_);
          self->checking_ = false;
          if (self->closed_) return;
          if (!ok) {
            if (why != self->last_failure_)
              spdlog::warn("jetstream: consumer {} of stream {}: {}", self->spec.name, self->spec.stream_bus, why);
            self->last_failure_ = why;
          } else {
            self->last_failure_.clear();
            self->pull_after_ = {};
          }
        }
        self->pull();
      });
    }
    pull();
  }

  void tick(Clock::time_point now, bool link_up) {
    bool stalled = false;
    std::vector<uint64_t> expired;
    {
      std::lock_guard lk(mu_);
      if (closed_) return;
      // Local ack waits: an expired delivery is no longer outstanding (the server redelivers it).
      for (auto it = out_.begin(); it != out_.end();) {
        if (it->second.deadline > now) {
          ++it;
          continue;
        }
        expired.push_back(it->second.sseq);
        by_seq_.erase(it->second.sseq);
        it = out_.erase(it);
      }
      // Requests with idle heartbeats hear from the server every kPullHeartbeat; others when they
      // expire.
      const Clock::duration quiet = quick_stall_ ? Clock::duration(kPullHeartbeat * kStallBeats)
                                                 : Clock::duration(kPullExpiresNoBeat + kStallGrace);
      stalled = link_up && started_ && requested_ > 0 && now - std::max(last_heard_, last_pull_) > quiet;
    }
    for (const uint64_t q : expired) let_go(q);
    if (stalled) {
      spdlog::debug("jetstream: consumer {}: no word from the server on a waiting pull request; pulling anew",
                    spec.name);
      return recover(false, false);
    }
    pull();
  }

 private:
  struct Out {
    std::string ack;
    uint32_t attempt;
    BusMessagePtr msg;
    Clock::time_point deadline;
    uint64_t sseq;
  };

  bool erase_locked(uint64_t id) {
    auto it = out_.find(id);
    if (it == out_.end()) return false;
    by_seq_.erase(it->second.sseq);
    out_.erase(it);
    return true;
  }

  void let_go(uint64_t sseq) {
    if (auto js = js_.lock()) js->let_go(key_, sseq, this);
  }

  static std::string nak_body(std::chrono::milliseconds delay) {
    if (delay.count() == 0) return "-NAK";
    return "-NAK {\"delay\": " + std::to_string(to_ns(delay)) + "}";
  }

  // Takes delivery `id` off this subscription; false when it is not outstanding (unknown, or its
  // ack wait has passed: then it is dropped and nothing is to be sent for it).
  bool take(uint64_t id, std::string& ack, uint32_t* attempt, BusMessagePtr* msg) {
    uint64_t sseq = 0;
    bool live = false;
    {
      std::lock_guard lk(mu_);
      auto it = out_.find(id);
      if (it == out_.end()) return false;
      sseq = it->second.sseq;
      live = it->second.deadline > Clock::now();
      if (live) {
        ack = std::move(it->second.ack);
        if (attempt) *attempt = it->second.attempt;
        if (msg) *msg = std::move(it->second.msg);
      }
      by_seq_.erase(sseq);
      out_.erase(it);
    }
    let_go(sseq);
    if (!live) pull();
    return live;
  }

  // Acknowledgements go with the link's next batch: the ACKs of one client read share one write.
  void send(const std::string& ack, std::string_view body) {
    if (auto js = js_.lock()) js->link.publish(ack, {}, {}, body, false);
  }

  // A new inbox (the old one retired): whatever was requested on the old one no longer counts.
  void relink_locked(NatsJetStream::Impl& js) {
    const uint64_t old = sid_;
    if (requested_ > 0) replaced_waiting_ = true;
    sid_ = js.next_sid.fetch_add(1);
    inbox_ = js.prefix + "d." + std::to_string(sid_);
    requested_ = 0;
    last_heard_ = Clock::now();
    js.route(sid_, shared_from_this());
    js.retire(old);
    // Under mu_: a pull for the new inbox can only follow its SUB on the link.
    if (old) js.link.unsubscribe(old);
    js.link.subscribe(sid_, inbox_, {});
  }

  // Asks for as many messages as the window has room for, beyond those already asked for. A new
  // request is sent when nothing is asked for, or when at least half the room is unasked (so a
  // subscription has few requests waiting on the server at a time).
  void pull() {
    auto js = js_.lock();
    if (!js) return;
    uint64_t batch = 0, epoch = 0;
    std::string inbox;
    const auto now = Clock::now();
    // Idle heartbeats unless the server refused them; long requests once a heartbeat was heard
    // from this server (one that ignores the field would otherwise look stalled).
    const bool beats = js->heartbeats.load();
    const bool heard = beats && js->heard_beat.load();
    {
      std::lock_guard lk(mu_);
      if (closed_ || !started_ || sid_ == 0 || now < pull_after_) return;
      uint64_t cap = limit_ > out_.size() ? limit_ - out_.size() : 0;
      if (credit_) cap = std::min(cap, credits_);
      if (cap <= requested_) return;
      const uint64_t room = cap - requested_;
      if (requested_ > 0 && room * 2 < cap) return;
      batch = room;
      requested_ += room;
      last_pull_ = now;
      beats_ = beats;
      quick_stall_ = heard;
      epoch = sid_;
      inbox = inbox_;
    }
    char body[128];
    int n = 0;
    if (beats)
      n = std::snprintf(body, sizeof body, "{\"batch\":%llu,\"expires\":%lld,\"idle_heartbeat\":%lld}",
                        static_cast<unsigned long long>(batch),
                        static_cast<long long>(to_ns(heard ? kPullExpires : kPullExpiresNoBeat)),
                        static_cast<long long>(to_ns(kPullHeartbeat)));
    else
      n = std::snprintf(body, sizeof body, "{\"batch\":%llu,\"expires\":%lld}", static_cast<unsigned long long>(batch),
                        static_cast<long long>(to_ns(kPullExpiresNoBeat)));
    if (js->link.publish(next_subject_, inbox, {}, std::string_view(body, static_cast<size_t>(n)), true) == Code::ok)
      return;
    std::lock_guard lk(mu_);
    if (sid_ == epoch) requested_ -= std::min(batch, requested_);
    pull_after_ = now + kPullRetry;
  }

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

// ------------------------------------------------------------------------------------------------

void NatsJetStream::Impl::prune_stats() {
  std::set<std::string> subscribed;
  {
    std::lock_guard lk(subs_mu);
    for (const auto& s : live) subscribed.insert(stat_key(s->spec.stream_bus, s->spec.name));
  }
  std::lock_guard lk(stats_mu);
  for (auto it = stats.begin(); it != stats.end();)
    it = !it->second.declared && !subscribed.count(it->first) && it->second.dead_lettered == 0 &&
                 it->second.redelivered == 0
             ? stats.erase(it)
             : std::next(it);
}

void NatsJetStream::Impl::on_message(const NatsInbound& m) {
  if (link_thread.load(std::memory_order_relaxed) != std::this_thread::get_id())
    link_thread.store(std::this_thread::get_id(), std::memory_order_relaxed);
  if (m.sid == kApiSid) return on_api(m);
  std::shared_ptr<JsSub> sub;
  bool current = false;
  {
    std::lock_guard lk(subs_mu);
    if (auto it = routes.find(m.sid); it != routes.end()) {
      sub = it->second.sub;
      current = !it->second.retired;
    }
  }
  const bool is_msg = m.reply.starts_with("$JS.ACK.");
  if (!sub) {
    if (is_msg) nak_raw(m.reply);  // nobody takes it: back to the consumer at once
    return;
  }
  if (is_msg) sub->on_msg(m, current);
  else if (current) sub->on_status(m);
}

void NatsJetStream::Impl::on_event(std::string_view what) {
  link_thread.store(std::this_thread::get_id(), std::memory_order_relaxed);
  if (what == "disconnected") {
    fail_waiting(ApiReply::Kind::down);
    return;
  }
  // (Re)connected: the server may be a new one (or restarted, with memory streams gone). The
  // configuration is applied again, and every subscription checks its consumer and pulls anew.
  heard_beat = false;
  apply();
  std::vector<std::shared_ptr<JsSub>> subs;
  {
    std::lock_guard lk(subs_mu);
    subs.assign(live.begin(), live.end());
  }
  for (auto& s : subs) s->recover(true, false);
}

void NatsJetStream::Impl::tick() {
  const auto now = Clock::now();
  fail_waiting(ApiReply::Kind::timeout);
  bool retry = false;
  {
    std::lock_guard lk(cfg_mu);
    if (retry_at && now >= *retry_at) {
      retry_at.reset();
      retry = true;
    }
  }
  if (retry) apply();
  std::vector<std::shared_ptr<JsSub>> subs;
  {
    std::lock_guard lk(subs_mu);
    subs.assign(live.begin(), live.end());
    for (auto it = routes.begin(); it != routes.end();)
      it = it->second.retired && it->second.until <= now ? routes.erase(it) : std::next(it);
  }
  const bool up = link.connected();
  for (auto& s : subs) s->tick(now, up);
}

void NatsJetStream::Impl::dead_letter(const std::shared_ptr<JsSub>& sub, const BusMessagePtr& msg,
                                      const std::string& ack, const std::string& reason, uint32_t attempts) {
  const ConsumerSpec& spec = sub->spec;
  const BusMessagePtr dl = make_dead_letter(*msg, spec, spec.client_subject(msg->subject), reason, attempts);
  std::string headers;
  to_nats_headers(dl->headers, headers);
  auto self = shared_from_this();
  // Settled only once the dead letter is safe: TERM after it is stored (or published, when no
  // stream stores the dead-letter subject); otherwise the message comes back later and the
  // gateway tries again.
  auto settle = [self, sub, ack, attempts, reason](bool ok, const std::string& why) {
    if (ok) {
      self->link.publish(ack, {}, {}, "+TERM", true);
      self->count(sub->spec, true);
      spdlog::debug("jetstream: consumer {}: a message dead-lettered to {} after {} attempts ({})", sub->spec.name,
                    sub->spec.dead_letter, attempts, reason);
    } else {
      spdlog::warn("jetstream: consumer {}: cannot dead-letter a message to {}: {}; it is retried", sub->spec.name,
                   sub->spec.dead_letter, why);
      self->link.publish(ack, {}, {}, "-NAK {\"delay\": " + std::to_string(to_ns(kDeadLetterRetry)) + "}", true);
    }
  };
  if (!stored_subject(spec.dead_letter)) {
    const Code c = link.publish(spec.dead_letter, {}, headers, dl->payload, true);
    return settle(c == Code::ok, "the NATS connection is down");
  }
  request(spec.dead_letter, headers, dl->payload, [settle](ApiReply& r) {
    if (r.kind == ApiReply::Kind::answer && !is_puback(r)) return false;  // a subscriber's reply
    settle(r.ok() || r.kind == ApiReply::Kind::no_responders, r.describe());
    return true;
  });
}

// ---------------------------------------------------------------- subscribing

void NatsJetStream::Impl::subscribe(std::shared_ptr<Opening> o) {
  if (!link.connected()) return o->ready(Code::bus_unavailable, "the NATS connection is down", nullptr);
  auto self = shared_from_this();
  consumer_info(o->spec.stream_bus, o->spec.name, [self, o](ApiReply& r) {
    const ConsumerSpec& spec = o->spec;
    if (r.ok()) {
      if (!spec.declared && !spec.filter.empty()) {
        std::string existing;
        if (auto c = r.body.find("config"); c != r.body.end() && c->is_object())
          existing = c->value("filter_subject", std::string());
        if (!existing.empty() && existing != spec.filter)
          return o->ready(Code::invalid_option,
                          "consumer '" + spec.name + "' exists and takes '" +
                              std::string(spec.client_subject(existing)) + "'",
                          nullptr);
      }
      return self->open(o, r.body);
    }
    if (!r.answered())
      return o->ready(Code::bus_unavailable, "consumer '" + spec.name + "': " + r.describe(), nullptr);
    if (r.err_code == kConsumerNotFound) return self->create_for(o);
    if (r.err_code == kStreamNotFound) {
      const auto s = self->stream_spec_of(spec.stream_bus);
      if (!s) return o->ready(Code::unknown_stream, "stream '" + spec.stream + "' does not exist on the bus", nullptr);
      return self->create_stream(*s, [self, o](ApiReply& r2) {
        if (!r2.ok())
          return o->ready(r2.answered() ? Code::unknown_stream : Code::bus_unavailable,
                          "stream '" + o->spec.stream + "': " + r2.describe(), nullptr);
        self->create_for(o);
      });
    }
    o->ready(Code::bus_unavailable, "consumer '" + spec.name + "': " + r.describe(), nullptr);
  });
}

void NatsJetStream::Impl::create_for(const std::shared_ptr<Opening>& o) {
  auto self = shared_from_this();
  auto create = [self, o] {
    self->create_consumer(o->spec, [self, o](ApiReply& r) {
      if (r.ok()) {
        spdlog::info("jetstream: consumer {} of stream {} created{}", o->spec.name, o->spec.stream_bus,
                     o->spec.declared ? "" : " by a client");
        return self->open(o, r.body);
      }
      if (!r.answered())
        return o->ready(Code::bus_unavailable, "consumer '" + o->spec.name + "': " + r.describe(), nullptr);
      if (r.err_code == kStreamNotFound)
        return o->ready(Code::unknown_stream, "stream '" + o->spec.stream + "' does not exist on the bus", nullptr);
      o->ready(Code::invalid_option, "consumer '" + o->spec.name + "': " + r.describe(), nullptr);
    });
  };
  if (o->spec.declared) return create();
  if (o->max_client_consumers == 0)
    return o->ready(Code::too_many_consumers, "the tenant may not create consumers (max_consumers is 0)", nullptr);
  count_client_consumers(o->spec.tenant, o->spec.stream_bus,
                         [o, create](bool ok, uint64_t n, const std::string& why) {
                           if (!ok) return o->ready(Code::bus_unavailable, why, nullptr);
                           if (n >= o->max_client_consumers)
                             return o->ready(Code::too_many_consumers,
                                             "the tenant has " + std::to_string(n) +
                                                 " consumers created by clients (max_consumers " +
                                                 std::to_string(o->max_client_consumers) + ")",
                                             nullptr);
                           create();
                         });
}

void NatsJetStream::Impl::count_client_consumers(const std::string& tenant, const std::string& also_stream,
                                                 std::function<void(bool, uint64_t, std::string)> done) {
  std::set<std::string> names;     // the tenant's streams
  std::set<std::string> declared;  // stat_key of declared consumers
  {
    std::lock_guard lk(cfg_mu);
    for (const auto& s : streams)
      if (s.tenant == tenant) names.insert(s.bus_name);
    for (const auto& c : consumers)
      if (c.tenant == tenant) declared.insert(stat_key(c.stream_bus, c.name));
  }
  names.insert(also_stream);
  struct Count {
    std::mutex mu;
    size_t left = 0;
    uint64_t n = 0;
    bool ok = true;
    std::string why;
    std::function<void(bool, uint64_t, std::string)> done;
  };
  auto st = std::make_shared<Count>();
  st->left = names.size();
  st->done = std::move(done);
  auto self = shared_from_this();
  auto finish_one = [st](bool ok, uint64_t n, const std::string& why) {
    bool last = false;
    {
      std::lock_guard lk(st->mu);
      st->n += n;
      if (!ok && st->ok) {
        st->ok = false;
        st->why = why;
      }
      last = --st->left == 0;
    }
    if (last) st->done(st->ok, st->n, st->why);
  };
  for (const auto& stream : names) {
    // Pages of CONSUMER.NAMES, counting names that are not declared.
    auto page = std::make_shared<std::function<void(uint64_t, uint64_t)>>();
    *page = [self, stream, declared, finish_one, page](uint64_t offset, uint64_t counted) {
      self->api("$JS.API.CONSUMER.NAMES." + stream, json{{"offset", offset}},
                [self, stream, declared, finish_one, page, offset, counted](ApiReply& r) mutable {
                  if (r.err_code == kStreamNotFound) {
                    *page = nullptr;  // the last page: drops the function's reference to itself
                    finish_one(true, counted, {});
                  } else if (!r.ok()) {
                    *page = nullptr;
                    finish_one(false, 0, "cannot count the tenant's consumers: " + r.describe());
                  } else {
                    uint64_t seen = 0;
                    if (auto c = r.body.find("consumers"); c != r.body.end() && c->is_array())
                      for (const auto& n : *c) {
                        ++seen;
                        if (n.is_string() && !declared.count(stat_key(stream, n.get<std::string>()))) ++counted;
                      }
                    const uint64_t total = r.body.value("total", uint64_t{0});
                    if (seen > 0 && offset + seen < total) {
                      (*page)(offset + seen, counted);
                    } else {
                      *page = nullptr;
                      finish_one(true, counted, {});
                    }
                  }
                  return true;
                });
    };
    (*page)(0, 0);
  }
}

void NatsJetStream::Impl::open(const std::shared_ptr<Opening>& o, const json& info) {
  uint64_t ack_wait_ms = o->spec.ack_wait_ms;
  uint64_t max_ack_pending = o->spec.max_inflight;
  if (auto c = info.find("config"); c != info.end() && c->is_object()) {
    if (const int64_t w = c->value("ack_wait", int64_t{0}); w > 0) ack_wait_ms = static_cast<uint64_t>(w / 1000000);
    if (const int64_t m = c->value("max_ack_pending", int64_t{0}); m > 0) max_ack_pending = static_cast<uint64_t>(m);
  }
  auto sub = std::make_shared<JsSub>(weak_from_this(), o->spec, o->window, o->sink, ack_wait_ms, max_ack_pending);
  {
    std::lock_guard lk(stats_mu);
    auto& e = stats[stat_key(o->spec.stream_bus, o->spec.name)];
    e.tenant = o->spec.tenant;
    e.stream = o->spec.stream;
    e.consumer = o->spec.name;
    e.stream_bus = o->spec.stream_bus;
    e.max_inflight = static_cast<uint32_t>(std::min<uint64_t>(max_ack_pending, UINT32_MAX));
  }
  {
    std::lock_guard lk(subs_mu);
    live.insert(sub);
  }
  sub->attach();
  o->ready(Code::ok, {}, sub);
}

// ------------------------------------------------------------------------------------------------

NatsJetStream::NatsJetStream(NatsLink& link, std::string inbox_prefix)
    : impl_(std::make_shared<Impl>(link, std::move(inbox_prefix))) {
  link.subscribe(kApiSid, impl_->api_prefix + "*", {});
  impl_->start_ticker();
}

NatsJetStream::~NatsJetStream() { stop(); }

void NatsJetStream::stop() { impl_->stop(); }

bool NatsJetStream::ready() const { return impl_->applied.load(); }

void NatsJetStream::on_message(const NatsInbound& m) { impl_->on_message(m); }

void NatsJetStream::on_link_event(std::string_view what) { impl_->on_event(what); }

void NatsJetStream::configure_durable(std::vector<StreamSpec> streams, std::vector<ConsumerSpec> consumers) {
  impl_->configure(std::move(streams), std::move(consumers));
}

void NatsJetStream::publish_stored(BusMessagePtr msg, std::string msg_id, StoredFn done) {
  std::string headers;
  to_nats_headers(msg->headers, headers);
  if (!msg_id.empty()) {
    if (headers.empty()) headers = "NATS/1.0\r\n\r\n";
    headers.insert(headers.size() - 2, "Nats-Msg-Id: " + msg_id + "\r\n");
  }
  std::string subject(msg->subject);
  std::weak_ptr<Impl> weak = impl_;
  impl_->request(msg->subject, headers, msg->payload, [done = std::move(done), subject, weak](ApiReply& r) {
    switch (r.kind) {
      case ApiReply::Kind::down:
        if (r.link_code == Code::payload_too_large)
          done(Code::payload_too_large, "the message is larger than the NATS server takes");
        else
          done(Code::bus_unavailable, "the NATS connection is down; the message may not be stored");
        return true;
      case ApiReply::Kind::timeout:
        done(Code::bus_unavailable, "the NATS server did not confirm storing the message within 5 s");
        return true;
      case ApiReply::Kind::no_responders:
        if (auto js = weak.lock()) js->reapply_soon();
        done(Code::not_stored, "no stream stores " + subject);
        return true;
      case ApiReply::Kind::answer:
        if (!is_puback(r)) return false;  // a plain subscriber answered; the PubAck follows
        if (!r.ok()) done(Code::not_stored, "JetStream did not store the message: " + r.error);
        else done(Code::ok, {});
        return true;
    }
    return true;
  }, false);
}

void NatsJetStream::subscribe_durable(ConsumerSpec spec, DurableWindow window, uint32_t max_client_consumers,
                                      std::shared_ptr<DurableSink> sink, DurableReadyFn ready) {
  auto o = std::make_shared<Impl::Opening>();
  o->spec = std::move(spec);
  o->window = window;
  o->max_client_consumers = max_client_consumers;
  o->sink = std::move(sink);
  o->ready = std::move(ready);
  impl_->subscribe(std::move(o));
}

std::vector<ConsumerStats> NatsJetStream::consumer_stats() {
  Impl& js = *impl_;
  const auto now = Clock::now();
  std::vector<std::pair<std::string, std::pair<std::string, std::string>>> refresh;  // key, (stream_bus, name)
  {
    std::lock_guard lk(js.stats_mu);
    for (auto& [k, e] : js.stats)
      if (!e.fetching && now - e.fetched >= kStatsTtl) {
        e.fetching = true;
        refresh.push_back({k, {e.stream_bus, e.consumer}});
      }
  }
  auto self = impl_;
  for (const auto& [key, sc] : refresh) {
    js.consumer_info(sc.first, sc.second, [self, key = key](ApiReply& r) {
      std::lock_guard lk(self->stats_mu);
      auto it = self->stats.find(key);
      if (it == self->stats.end()) return;
      StatEntry& e = it->second;
      e.fetching = false;
      e.fetched = Clock::now();
      if (r.ok()) {
        e.pending = r.body.value("num_pending", uint64_t{0});
        e.ack_pending = r.body.value("num_ack_pending", uint64_t{0});
        if (auto c = r.body.find("config"); c != r.body.end() && c->is_object())
          if (const uint64_t m = c->value("max_ack_pending", uint64_t{0}); m > 0)
            e.max_inflight = static_cast<uint32_t>(std::min<uint64_t>(m, UINT32_MAX));
      }
      self->stats_cv.notify_all();
    });
  }
  std::unique_lock lk(js.stats_mu);
  if (!refresh.empty() && js.link_thread.load() != std::this_thread::get_id() && js.link.connected()) {
    js.stats_cv.wait_for(lk, kStatsWait, [&] {
      for (const auto& [key, sc] : refresh)
        if (auto it = js.stats.find(key); it != js.stats.end() && it->second.fetching) return false;
      return true;
    });
  }
  std::vector<ConsumerStats> out;
  std::map<std::string, uint32_t> subs;
  {
    std::lock_guard sl(js.subs_mu);
    for (const auto& s : js.live) ++subs[stat_key(s->spec.stream_bus, s->spec.name)];
  }
  for (const auto& [k, e] : js.stats) {
    ConsumerStats c;
    c.tenant = e.tenant;
    c.stream = e.stream;
    c.consumer = e.consumer;
    c.pending = e.pending;
    c.ack_pending = e.ack_pending;
    c.redelivered = e.redelivered;
    c.dead_lettered = e.dead_lettered;
    c.max_inflight = e.max_inflight;
    if (auto it = subs.find(k); it != subs.end()) c.subscribers = it->second;
    out.push_back(std::move(c));
  }
  return out;
}

}  // namespace busgate::gw
