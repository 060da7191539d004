#include "nats_bus.hpp"

#include <algorithm>
#include <spdlog/spdlog.h>

#include <condition_variable>
#include <vector>

#include "busgate/protocol/msgpack.hpp"
#include "busgate/protocol/subject.hpp"
#include "nats_jetstream.hpp"
#include "nats_link.hpp"

namespace busgate::gw {

using proto::Code;
using namespace std::literals;

static std::atomic<uint64_t> g_headers_dropped{0};  // headers from the bus that broke the spec's rules

namespace {

constexpr uint64_t kInboxSid = 1;
constexpr auto kSubscribeWait = std::chrono::seconds(1);
// A conflict seen by a node that stays ready is logged at most this often.
constexpr auto kConflictLogEvery = std::chrono::seconds(10);

struct Local {
  uint64_t id;
  std::shared_ptr<DeliverFn> fn;
  // A subscriber joining an existing bus subscription becomes active when the server has answered
  // the PING sent after its SUB: what arrives before that was published before it subscribed.
  bool active;
};

// A reserved key as gateways write it: lowercase letters, digits, '-', '_' and '.', at most 64 bytes.
bool reserved_key_as_written(std::string_view k) {
  if (k.size() > 64) return false;
  for (char c : k)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.')) return false;
  return true;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

BusMessagePtr to_bus_message(const NatsInbound& m, std::string_view* status = nullptr) {
  // The messages of one publisher mostly carry the same header block (busgate-tenant): a block
  // equal to the previous one on this thread is not converted again. A block that had headers
  // dropped is converted (and counted) every time.
  struct Converted {
    std::string block, headers, status;
    bool valid = false;
  };
  thread_local Converted c;
  if (!c.valid || m.headers != c.block) {
    const uint64_t dropped = g_headers_dropped.load(std::memory_order_relaxed);
    // A stored publish's idempotency key is the gateway's, not the publisher's header.
    c.status.assign(from_nats_headers(m.headers, c.headers, false, true));
    c.block.assign(m.headers);
    c.valid = g_headers_dropped.load(std::memory_order_relaxed) == dropped;
  }
  if (status) *status = c.status;
  return std::make_shared<const BusMessage>(m.subject, m.reply, c.headers, m.payload);
}

// The NATS header block for a message's packed headers. Consecutive messages of one publisher carry
// the same packed headers: the block is built once for them.
const std::string& nats_headers_of(std::string_view packed) {
  thread_local std::string last_packed, block;
  if (packed != last_packed) {
    to_nats_headers(packed, block);
    last_packed.assign(packed);
  }
  return block;
}

// A one-shot signal a thread can wait on with a deadline.
struct Signal {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  void set() {
    std::lock_guard lk(mu);
    done = true;
    cv.notify_all();
  }
  void wait_for(std::chrono::milliseconds d) {
    std::unique_lock lk(mu);
    cv.wait_for(lk, d, [this] { return done; });
  }
};

}  // namespace

void to_nats_headers(std::string_view packed, std::string& out) {
  out.clear();
  if (packed.empty()) return;
  proto::mp::Reader rd(packed);
  uint32_t n = 0;
  if (!rd.read_map(n) || n == 0) return;
  out.append("NATS/1.0\r\n"sv);
  for (uint32_t i = 0; i < n; ++i) {
    std::string_view k, v;
    if (!rd.read_str(k) || !rd.read_str(v)) break;
    // Client headers are grammar-checked on entry; anything that would break the framing is dropped.
    bool ok = !k.empty();
    for (char c : k) ok = ok && c != ':' && c != ' ' && c != '\r' && c != '\n';
    for (char c : v) ok = ok && c != '\r' && c != '\n';
    if (!ok) continue;
    out.append(k).append(": "sv).append(v).append("\r\n"sv);
  }
  out.append("\r\n"sv);
}

std::string_view from_nats_headers(std::string_view block, std::string& out, bool drop_nats, bool drop_msg_id) {
  out.clear();
  std::string_view status;
  thread_local std::vector<std::pair<std::string_view, std::string_view>> kv;
  kv.clear();
  bool first = true;
  size_t plain = 0;  // headers kept that are not gateway-set
  while (!block.empty()) {
    const size_t eol = block.find('\n');
    std::string_view line = block.substr(0, eol);
    block = eol == std::string_view::npos ? std::string_view{} : block.substr(eol + 1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (first) {
      first = false;
      if (line.starts_with("NATS/1.0")) {
        const std::string_view rest = trim(line.substr(8));
        status = rest.substr(0, rest.find(' '));
      }
      continue;
    }
    if (line.empty()) break;
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos || colon == 0) continue;
    const std::string_view k = trim(line.substr(0, colon));
    // The value is carried byte for byte: only the one space after the colon is the format's.
    std::string_view v = line.substr(colon + 1);
    if (!v.empty() && v.front() == ' ') v.remove_prefix(1);
    if (drop_nats && k.size() > 5 && (k[0] | 0x20) == 'n' && (k[1] | 0x20) == 'a' && (k[2] | 0x20) == 't' &&
        (k[3] | 0x20) == 's' && k[4] == '-')
      continue;
    if (drop_msg_id && k.size() == 11 &&
        std::equal(k.begin(), k.end(), "nats-msg-id", [](char a, char b) { return (a | 0x20) == b; }))
      continue;
    bool seen = false;
    for (const auto& p : kv) seen = seen || p.first == k;
    if (seen) continue;  // a repeated header: its first value is delivered (docs/protocol.md 11)
    // Headers reach clients only as the spec allows them (key grammar, value length, no more than 64).
    // (busgate- headers are the gateways' own: reserved for clients, valid from the bus.)
    // The gateways' own busgate- headers do not count against the 64 a publisher may set.
    const proto::Code hc = proto::validate_header(k, v);
    const bool gateway_set = hc == proto::Code::reserved_header;
    // Gateways write their headers in lowercase: another casing of a reserved key is somebody
    // else's, and a client must never see two differently cased copies of one of them.
    const bool fits = hc == proto::Code::ok || (gateway_set && reserved_key_as_written(k) && v.size() <= 4096);
    if (!fits || (!gateway_set && plain >= proto::kMaxHeaders)) {
      g_headers_dropped.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    if (!gateway_set) ++plain;
    kv.emplace_back(k, v);
  }
  if (kv.empty()) return status;
  proto::mp::Writer w(out);
  w.map_header(static_cast<uint32_t>(kv.size()));
  for (const auto& [k, v] : kv) {
    w.str(proto::is_valid_utf8(k) ? k : std::string_view("?"));
    w.str(proto::is_valid_utf8(v) ? v : std::string_view("?"));
  }
  return status;
}

struct NatsBus::Interest {
  uint64_t sid = 0;
  std::string subject;
  std::string queue;
  std::mutex mu;
  std::vector<Local> locals;
  uint64_t rr = 0;
  bool refused = false;  // the server refused the SUB: the interest is gone (under mu)
};

NatsBus::NatsBus(const GatewayConfig& cfg)
    : node_id_(cfg.node_id), inbox_prefix_("_INBOX." + cfg.node_id + "."), probe_(random_token()) {
  NatsLinkOptions o;
  o.servers = cfg.bus.servers;
  o.name = cfg.bus.name;
  o.user = cfg.bus.user;
  o.password = cfg.bus.password;
  o.token = cfg.bus.token;
  o.creds_file = cfg.bus.creds_file;
  o.tls_ca = cfg.bus.tls_ca;
  o.tls_cert = cfg.bus.tls_cert;
  o.tls_key = cfg.bus.tls_key;
  link_ = std::make_unique<NatsLink>(
      std::move(o), [this](const NatsInbound& m) { on_message(m); },
      [this](std::string_view what, const std::string&) { on_link_event(what); },
      [this](uint64_t sid, std::string_view error) { on_refused(sid, error); });
  js_ = std::make_unique<NatsJetStream>(*link_, inbox_prefix_ + "js.");
  link_->subscribe(kInboxSid, inbox_prefix_ + "*", "");
  probe_timer_ = std::thread([this] { run_probe_timer(); });
  if (link_->start(std::chrono::milliseconds(3000))) {
    // Not ready before the first probe has had its window: a duplicate never becomes ready at all.
    std::unique_lock lk(probe_mu_);
    probe_cv_.wait_for(lk, std::chrono::seconds(2),
                       [this] { return probe_.state() != NodeIdProbe::State::unknown && !probe_.probing(); });
  }
}

NatsBus::~NatsBus() {
  {
    std::lock_guard lk(probe_mu_);
    probe_stop_ = true;
  }
  probe_cv_.notify_all();
  probe_timer_.join();
  js_->stop();
  link_.reset();
}

// Ready once connected, when no other live node uses this node's id, and, when streams are
// configured, once JetStream has answered for them.
bool NatsBus::healthy() const {
  if (!link_->connected() || !js_->ready()) return false;
  std::lock_guard lk(probe_mu_);
  return probe_.ready();
}

std::string NatsBus::not_ready_reason() const {
  std::lock_guard lk(probe_mu_);
  if (probe_.state() != NodeIdProbe::State::duplicate) return {};
  return "another live node uses node_id " + node_id_ + " on the bus";
}

void NatsBus::publish_probe(const std::string& token) {
  link_->publish(inbox_prefix_ + token, {}, {}, {}, true);
}

// Ends probe windows and repeats a duplicate's probe (node_probe.hpp).
void NatsBus::run_probe_timer() {
  std::unique_lock lk(probe_mu_);
  while (!probe_stop_) {
    const auto next = probe_.next_tick();
    if (next == NodeIdProbe::Clock::time_point::max()) probe_cv_.wait(lk);
    else probe_cv_.wait_until(lk, next);
    if (probe_stop_) break;
    const bool was_probing = probe_.probing();
    const std::string probe = probe_.tick(NodeIdProbe::Clock::now(), link_->connected());
    const bool recovered = probe_.take_recovered();
    const bool changed = was_probing != probe_.probing() || !probe.empty();
    lk.unlock();
    if (recovered)
      spdlog::info("no other live node uses node_id {} on the bus any more: becoming ready", node_id_);
    if (!probe.empty()) publish_probe(probe);
    if (changed) probe_cv_.notify_all();  // the constructor waits for the first window's end
    lk.lock();
  }
}

void NatsBus::on_probe_message(std::string_view token) {
  NodeIdProbe::Reaction r;
  bool log_conflict = false;
  {
    std::lock_guard lk(probe_mu_);
    const auto now = NodeIdProbe::Clock::now();
    r = probe_.on_inbox(token, now);
    if (r.conflict && !r.lost && now - last_conflict_log_ >= kConflictLogEvery) {
      log_conflict = true;
      last_conflict_log_ = now;
    }
  }
  if (!r.answer.empty()) publish_probe(r.answer);
  if (r.lost) {
    probe_cv_.notify_all();
    spdlog::error("another live node uses node_id {} on the bus; refusing to become ready: give every node its own "
                  "node_id",
                  node_id_);
  }
  if (log_conflict)
    spdlog::error("another node with node_id {} is on the bus{}: give every node its own node_id", node_id_,
                  r.answer.empty() ? "" : " (it was told not to become ready)");
}

DurableBus* NatsBus::durable() { return js_.get(); }
bool NatsBus::congested() const { return link_->congested(); }
void NatsBus::when_drained(std::function<void()> fn) { link_->when_drained(std::move(fn)); }

size_t NatsBus::max_message() const {
  const int64_t m = link_->max_payload();
  return m > 0 ? static_cast<size_t>(m) : 1048576;  // nats-server's default until the server says
}

BusStats NatsBus::stats() const {
  std::lock_guard lk(mu_);
  BusStats s;
  s.subscriptions = interests_.size() + 1;
  s.reconnects = link_->reconnects();
  s.headers_dropped = g_headers_dropped.load(std::memory_order_relaxed);
  s.subscriptions_refused = subs_refused_.load(std::memory_order_relaxed);
  s.publishes_refused = link_->publishes_refused();
  return s;
}

void NatsBus::on_link_event(std::string_view what) {
  // Requests in flight get no reply through a lost connection: they fail now, not at their timeout.
  if (what == "disconnected") {
    {
      std::lock_guard lk(probe_mu_);
      probe_.on_disconnected();
    }
    for (ReplyFn& f : requests_.take_all())
      if (f) f(Code::bus_unavailable, nullptr);
  } else {
    // Every (re)connection asks whether another live node has this id; the inbox subscription went
    // to the server before this, so the answer reaches us.
    std::string probe;
    {
      std::lock_guard lk(probe_mu_);
      probe = probe_.on_connected(NodeIdProbe::Clock::now());
    }
    probe_cv_.notify_all();
    publish_probe(probe);
  }
  js_->on_link_event(what);
}

void NatsBus::on_refused(uint64_t sid, std::string_view error) {
  if (sid == kInboxSid) {
    spdlog::error("nats: the server refused the node inbox {}*: requests get no replies ({})", inbox_prefix_,
                  error.substr(0, 256));
    return;
  }
  if (NatsJetStream::owns(sid)) return;  // a JetStream inbox: its pulls fail and are retried
  std::lock_guard lk(mu_);
  auto it = by_sid_.find(sid);
  if (it == by_sid_.end()) return;
  Interest* in = it->second;
  by_sid_.erase(it);
  subs_refused_.fetch_add(1, std::memory_order_relaxed);
  {
    std::lock_guard il(in->mu);
    in->refused = true;
  }
  // The next subscriber to this subject asks the server again.
  if (auto i = interests_.find({in->subject, in->queue}); i != interests_.end() && i->second.get() == in)
    interests_.erase(i);
}

void NatsBus::drop_local(const std::shared_ptr<Interest>& in, uint64_t id) {
  std::lock_guard lk(mu_);
  if (auto it = by_local_id_.find(id); it != by_local_id_.end() && it->second == in) by_local_id_.erase(it);
  std::lock_guard il(in->mu);
  std::erase_if(in->locals, [id](const Local& l) { return l.id == id; });
}

uint64_t NatsBus::subscribe(const std::string& subject, const std::string& queue, DeliverFn fn) {
  auto sig = std::make_shared<Signal>();
  auto code = std::make_shared<std::atomic<Code>>(Code::ok);
  const uint64_t id = subscribe_async(subject, queue, std::move(fn), CodeFn([sig, code](Code c) {
                                        code->store(c);
                                        sig->set();
                                      }));
  sig->wait_for(kSubscribeWait);
  return code->load() == Code::ok ? id : 0;
}

void NatsBus::confirm(CodeFn done) {
  link_->ping([done = std::move(done)](bool ok) { done(ok ? Code::ok : Code::bus_unavailable); });
}

uint64_t NatsBus::subscribe_async(const std::string& subject, const std::string& queue, DeliverFn fn, CodeFn done) {
  const uint64_t id = next_id_.fetch_add(1);
  auto local = std::make_shared<DeliverFn>(std::move(fn));
  std::shared_ptr<Interest> in;
  bool created = false;
  {
    std::lock_guard lk(mu_);
    auto& slot = interests_[{subject, queue}];
    if (!slot) {
      slot = std::make_shared<Interest>();
      slot->sid = next_id_.fetch_add(1);
      slot->subject = subject;
      slot->queue = queue;
      by_sid_[slot->sid] = slot.get();
      created = true;
      spdlog::debug("nats: bus subscription {}{}{}", subject, queue.empty() ? "" : " queue ", queue);
    }
    in = slot;
    {
      std::lock_guard il(in->mu);
      in->locals.push_back({id, std::move(local), created});
    }
    by_local_id_[id] = in;
    // Under mu_, so that SUB and UNSUB for one interest reach the link in the order they happen.
    if (created) link_->subscribe(in->sid, subject, queue);
  }
  // One round trip: when the PONG arrives the server has processed the SUB (the subscription is
  // live, or refused: its -ERR came before the PONG) and every message it sent before is behind us,
  // so a subscriber joining an existing bus subscription starts there. A lost connection is no
  // refusal: the subscription is replayed on the next one.
  link_->ping([this, in, id, created, done = std::move(done)](bool) {
    bool refused = false;
    {
      std::lock_guard il(in->mu);
      refused = in->refused;
      if (!refused && !created)
        for (auto& l : in->locals)
          if (l.id == id) l.active = true;
    }
    if (refused) {
      drop_local(in, id);
      return done(Code::permission_denied);
    }
    done(Code::ok);
  });
  return id;
}

void NatsBus::unsubscribe(uint64_t id) {
  std::lock_guard lk(mu_);
  auto it = by_local_id_.find(id);
  if (it == by_local_id_.end()) return;
  const std::shared_ptr<Interest> in = it->second;
  by_local_id_.erase(it);
  {
    std::lock_guard il(in->mu);
    std::erase_if(in->locals, [id](const Local& l) { return l.id == id; });
    if (!in->locals.empty()) return;
  }
  // The last local subscriber left: release the bus subscription (unless the server refused it:
  // then it is gone already, and another may hold its key).
  by_sid_.erase(in->sid);
  if (auto i = interests_.find({in->subject, in->queue}); i != interests_.end() && i->second == in) interests_.erase(i);
  link_->unsubscribe(in->sid);
}

void NatsBus::on_message(const NatsInbound& m) {
  if (m.sid == kInboxSid) return on_inbox(m);
  if (NatsJetStream::owns(m.sid)) return js_->on_message(m);
  thread_local std::vector<std::shared_ptr<DeliverFn>> targets;
  targets.clear();
  {
    std::lock_guard lk(mu_);
    auto it = by_sid_.find(m.sid);
    if (it == by_sid_.end()) return;  // unsubscribed meanwhile
    Interest& in = *it->second;
    std::lock_guard il(in.mu);
    if (in.queue.empty()) {
      for (const auto& l : in.locals)
        if (l.active) targets.push_back(l.fn);
    } else {  // NATS picked this node for the group; pick one local member
      const size_t n = in.locals.size();
      for (size_t i = 0; i < n; ++i) {
        const Local& l = in.locals[(in.rr + i) % n];
        if (!l.active) continue;
        targets.push_back(l.fn);
        in.rr = in.rr + i + 1;
        break;
      }
    }
  }
  if (targets.empty()) return;
  const BusMessagePtr msg = to_bus_message(m);
  for (const auto& fn : targets) (*fn)(msg);
  targets.clear();
}

proto::Code NatsBus::publish(BusMessagePtr msg, bool immediate) {
  return publish_copy(msg->subject, msg->reply_to, msg->headers, msg->payload, immediate);
}

proto::Code NatsBus::publish_copy(std::string_view subject, std::string_view reply_to, std::string_view headers,
                                  std::string_view payload, bool immediate) {
  // Replies (to request inboxes) and acknowledged PUBs are waited on: written at once when the link
  // is idle. The rest is batched.
  const bool now = immediate || subject.starts_with("_INBOX.");
  return link_->publish(subject, reply_to, nats_headers_of(headers), payload, now);
}

uint64_t NatsBus::request(std::shared_ptr<BusMessage> msg, ReplyFn fn) {
  const uint64_t token = requests_.add(std::move(fn));
  msg->set_reply_to(inbox_subject(inbox_prefix_, token));
  if (const Code c = link_->publish(msg->subject, msg->reply_to, nats_headers_of(msg->headers), msg->payload, true);
      c != Code::ok)
    if (ReplyFn f = requests_.take(token)) f(c, nullptr);
  return token;
}

void NatsBus::cancel_request(uint64_t token) { requests_.cancel(token); }

void NatsBus::on_inbox(const NatsInbound& m) {
  if (m.subject.size() <= inbox_prefix_.size()) return;
  const std::string_view rest = m.subject.substr(inbox_prefix_.size());
  uint64_t token = 0;
  if (!parse_inbox_token(rest, token)) return on_probe_message(rest);
  ReplyFn fn = requests_.take(token);
  if (!fn) return;  // late, duplicate or cancelled
  std::string_view status;
  const BusMessagePtr reply = to_bus_message(m, &status);
  // A status-only reply is the bus speaking, not a responder: 503 no responders, 408 timeout; any
  // other status is reported as INTERNAL_ERROR rather than passed on as an empty answer.
  if (!status.empty() && m.payload.empty()) {
    if (status == "503") return fn(Code::no_responders, nullptr);
    if (status == "408") return fn(Code::request_timeout, nullptr);
    return fn(Code::internal_error, nullptr);
  }
  fn(Code::ok, reply);
}

}  // namespace busgate::gw
