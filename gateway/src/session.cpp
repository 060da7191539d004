#include "session.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/post.hpp>
#include <cmath>
#include <optional>
#include <random>
#include <utility>

#include "busgate/protocol/msgpack.hpp"
#include "busgate/protocol/subject.hpp"
#include "handshake.hpp"
#include "log_text.hpp"
#include "server.hpp"
#include "session_sub.hpp"
#include "tcp_progress.hpp"

namespace busgate::gw {

namespace asio = boost::asio;
using proto::Code;
using Clock = std::chrono::steady_clock;

namespace {

constexpr std::string_view kInbox = "_INBOX.";
// After a fatal ERR is queued, the peer has this long to read what is queued before it; then the
// connection is closed without waiting (a stalled peer must not hold the session forever).
constexpr auto kFatalWriteGrace = std::chrono::seconds(5);
// Producer flow control: how often a delivery lane waiting for this consumer looks for progress...
constexpr auto kProducerStall = std::chrono::milliseconds(10);
// ... and gives up on a consumer (until its queue empties) after this many looks without progress.
constexpr uint32_t kIdleStallsToGiveUp = 5;
// Backlog entries a lane delivers in one turn of a consumer's thread before letting others run.
constexpr size_t kLaneBudget = 256;
constexpr size_t kWriteSlice = 256 * 1024;

std::string random_id() {
  static constexpr char kAlphabet[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::string s(22, '0');
  for (auto& c : s) c = kAlphabet[rng() % 62];
  return s;
}

const char* state_name(Session::State s) {
  switch (s) {
    case Session::State::handshake: return "handshake";
    case Session::State::open: return "open";
    case Session::State::draining: return "draining";
    default: return "closed";
  }
}

}  // namespace


Session::Session(Server& server, asio::any_io_executor ex, uint64_t id)
    : server_(server),
      ex_(ex),
      id_(id),
      session_id_(random_id()),
      handshake_timer_(ex),
      heartbeat_timer_(ex),
      drain_timer_(ex),
      close_timer_(ex),
      request_timer_(ex),
      out_(server.config().max_pending_bytes),
      lane_timer_(ex) {}

Session::~Session() = default;

void Session::attach(Transport* t) {
  transport_ = t;
  fd_.store(t->native_fd(), std::memory_order_relaxed);
  transport_kind_ = t->kind();
  remote_ = t->remote();
  server_.metrics().connections_opened.fetch_add(1, std::memory_order_relaxed);
  arm_handshake_timer();
}

const TenantConfig& Session::cfg() {
  const uint64_t g = tenant_->generation();
  if (g != cfg_gen_) {
    cfg_ = tenant_->config();
    cfg_gen_ = g;
  }
  return *cfg_;
}

// ---------------------------------------------------------------- inbound

void Session::on_frame(std::string_view body) {
  const State st = state_.load();
  if (st == State::closed || closing_) return;
  rx_since_tick_ = true;
  ping_outstanding_ = false;
  bytes_in_.fetch_add(body.size() + 4, std::memory_order_relaxed);
  proto::Frame f;
  const auto r = proto::decode(body, proto::Origin::client, f);
  if (st == State::handshake) {
    if (r.code == Code::ok || r.has_frame) {
      if (const auto* h = std::get_if<proto::Hello>(&f)) return on_hello(*h, r);
    }
    if (r.code == Code::malformed_frame) return fatal(r.code, r.detail);
    return fatal(Code::handshake_required, "the first frame must be HELLO (got " + std::string(proto::op_name(r.op)) + ")",
                 r.op);
  }
  if (!r.has_frame) {
    // MALFORMED_FRAME is fatal; UNKNOWN_OP and UNEXPECTED_OP are not.
    if (proto::is_fatal(r.code)) return fatal(r.code, r.detail);
    return send_err(r.code, r.detail, r.op, 0);
  }
  handle(f, r);
}

void Session::handle(const proto::Frame& f, const proto::DecodeResult& r) {
  switch (proto::frame_op(f)) {
    case proto::Op::hello: return send_err(Code::unexpected_op, "HELLO was already received", 1, 0);
    case proto::Op::pub: return on_pub(std::get<proto::Pub>(f), r);
    case proto::Op::sub: return on_sub(std::get<proto::Sub>(f), r);
    case proto::Op::unsub: return on_unsub(std::get<proto::Unsub>(f));
    case proto::Op::req: return on_req(std::get<proto::Req>(f), r);
    case proto::Op::ping: return send_frame(proto::Pong{});
    case proto::Op::pong: return;
    case proto::Op::ack: {
      const auto& a = std::get<proto::Ack>(f);
      return on_settle(14, a.sid, a.delivery_id, 0, {});
    }
    case proto::Op::nak: {
      const auto& n = std::get<proto::Nak>(f);
      return on_settle(15, n.sid, n.delivery_id, n.delay_ms, {});
    }
    case proto::Op::progress: {
      const auto& g = std::get<proto::Progress>(f);
      return on_settle(17, g.sid, g.delivery_id, 0, {});
    }
    case proto::Op::term: {
      const auto& t = std::get<proto::Term>(f);
      return on_settle(18, t.sid, t.delivery_id, 0, t.reason ? *t.reason : std::string_view{});
    }
    case proto::Op::credit: return on_credit(std::get<proto::Credit>(f));
    default: return;
  }
}

void Session::on_hello(const proto::Hello& h, const proto::DecodeResult& r) {
  if (r.code != Code::ok) return fatal(r.code, r.detail, 1);
  const HelloCheck check = check_hello(h);
  if (check.code != Code::ok) return fatal(check.code, check.message, 1);
  // Failed HELLOs are throttled per remote address: past its budget, an address is refused before
  // its token is looked at (docs/protocol.md section 15, authentication throttle).
  AuthThrottle& throttle = server_.auth_throttle();
  const std::string_view address = address_of(remote_);
  const auto now = Clock::now();
  if (!throttle.allowed(address, now)) {
    server_.metrics().auth_throttled.fetch_add(1, std::memory_order_relaxed);
    const auto wait_s = static_cast<uint64_t>(std::ceil(throttle.retry_after_s(address, now)));
    return fatal(Code::auth_failed,
                 "too many failed authentications from this address; try again in " + std::to_string(wait_s) + " s",
                 1);
  }
  auto auth = server_.registry().authenticate(check.token);
  if (!auth) {
    throttle.failed(address, now);
    server_.metrics().auth_failures.fetch_add(1, std::memory_order_relaxed);
    return fatal(Code::auth_failed, "the token was not accepted", 1);
  }
  if (server_.draining()) return fatal(Code::shutting_down, "the gateway is shutting down", 1);
  if (!auth->tenant->try_acquire_connection())
    return fatal(Code::too_many_connections, "tenant '" + auth->tenant->name() + "' reached its connection limit", 1);
  counted_connection_ = true;
  {
    std::lock_guard lk(meta_mu_);  // info() reads them from other threads
    tenant_ = auth->tenant;
    if (h.name) client_name_ = std::string(h.name->substr(0, 128));
  }
  {
    const auto& g = server_.config();
    lane_ = tenant_->lane(g.max_backlog_bytes, g.max_tenant_queued_bytes, &server_.queued_budget(),
                          &server_.metrics().budget_drops);
    std::lock_guard lk(out_mu_);
    budget_.attach(&tenant_->queued_budget(g.max_tenant_queued_bytes), &server_.queued_budget());
  }
  token_digest_ = std::move(auth->digest);
  const TenantConfig& c = cfg();

  const auto& gc = server_.config();
  const Negotiated n =
      negotiate(h, {c.limits.max_payload, server_.bus().max_message(), gc.heartbeat_ms, gc.min_heartbeat_ms});
  max_payload_ = n.max_payload;
  max_frame_ = n.max_frame;
  heartbeat_ms_ = n.heartbeat_ms;
  transport_->set_max_frame(max_frame_);

  proto::Welcome w;
  w.version = proto::kProtocolVersion;
  w.session_id = session_id_;
  w.node_id = server_.node_id();
  w.tenant = tenant_->name();
  w.limits.type = proto::mp::Type::map;
  auto add = [&](std::string_view k, uint64_t v) {
    proto::mp::Value val;
    val.type = proto::mp::Type::uint;
    val.u = v;
    w.limits.map.push_back({k, std::move(val)});
  };
  add("max_frame", max_frame_);
  add("max_payload", max_payload_);
  add("heartbeat_ms", heartbeat_ms_);
  add("max_subs", c.limits.max_subscriptions);
  add("max_inflight", c.limits.max_inflight_requests);
  add("max_pending", out_.max_pending());
  add("request_timeout_ms", gc.request_timeout_ms);
  add("max_timeout_ms", gc.max_request_timeout_ms);
  send_frame(w);
  handshake_timer_.cancel();
  state_ = State::open;
  // Client-supplied text is escaped: it cannot start a line or forge a field of its own.
  spdlog::info("connection open session={} tenant={} transport={} remote={} name=\"{}\"", session_id_, tenant_->name(),
               transport_kind_, log_text(remote_), log_text(client_name_, 160));
  arm_heartbeat();
}

void Session::on_pub(const proto::Pub& p, const proto::DecodeResult& r) {
  msgs_in_.fetch_add(1, std::memory_order_relaxed);
  published_ = true;
  const uint64_t ref = p.ack;
  if (r.code != Code::ok) return send_err(r.code, r.detail, 3, ref);
  if (p.payload.size() > max_payload_)
    return send_err(Code::payload_too_large,
                    "payload of " + std::to_string(p.payload.size()) + " bytes is above max_payload " +
                        std::to_string(max_payload_),
                    3, ref);
  const TenantConfig& c = cfg();
  // Scratch buffers reused across frames on this thread: no allocation per message once warm.
  thread_local std::string subject, reply, headers;
  subject.clear();
  if (p.subject.starts_with(kInbox)) {
    // A reply subject: allowed once for each message that carried it to this connection.
    {
      std::lock_guard lk(out_mu_);
      subject = grants_.take(p.subject);
    }
    if (subject.empty())
      return send_err(Code::permission_denied,
                      "'" + std::string(p.subject.substr(0, 64)) + "' is a reply subject this connection was not given",
                      3, ref);
  } else {
    if (!subject_allowed(c.permissions.publish, p.subject))
      return send_err(Code::permission_denied, "publish to '" + std::string(p.subject) + "' is not permitted", 3, ref);
    map_outbound_subject(c, p.subject, subject);
  }
  // Replies through a grant answer an admitted request: they are not rate-limited (spec 12.3).
  if (!p.subject.starts_with(kInbox) && !tenant_->try_publish(p.payload.size()))
    return send_err(Code::rate_limited, "tenant publish rate exceeded; message dropped", 3, ref);
  // A subject a stream stores: the bus answers a reply subject with its store confirmation, so the
  // publisher's reply_to is not relayed (docs/protocol.md section 16.5).
  const bool stored = !c.streams.empty() && stream_stores(c, subject);
  reply.clear();
  if (p.reply_to && !stored) reply.assign(c.prefix).append(*p.reply_to);
  encode_headers_with_tenant(p.headers, headers);
  auto msg = std::make_shared<const BusMessage>(subject, reply, headers, p.payload);
  tenant_->msgs_in.fetch_add(1, std::memory_order_relaxed);
  tenant_->bytes_in.fetch_add(p.payload.size(), std::memory_order_relaxed);
  if (stored && (ref || p.msg_id) && publish_stored(p, msg)) return;
  const Code rc = server_.bus().publish(std::move(msg), ref != 0);
  if (rc != Code::ok) return send_err(rc, "the bus did not accept the message", 3, ref);
  if (ref) confirm_pub(ref);
}

namespace {
// A confirm() answered on the calling thread (the memory bus, or a bus that is down): its answer is
// sent in order with the rest of the read batch instead of being posted.
thread_local const Session* t_confirming = nullptr;
thread_local std::optional<Code> t_confirmed;
}  // namespace

void Session::confirm_pub(uint64_t ref) {
  // OK once the bus server has the message (NATS: a PING/PONG round trip shared by the batch).
  t_confirming = this;
  server_.bus().confirm([weak = weak_from_this(), ex = ex_, ref, me = this](Code c) {
    if (t_confirming == me) {
      t_confirmed = c;
      return;
    }
    asio::post(ex, [weak, ref, c] {
      if (auto self = weak.lock()) {
        self->answer_pub(ref, c);
        self->flush();
      }
    });
  });
  t_confirming = nullptr;
  if (t_confirmed) answer_pub(ref, *std::exchange(t_confirmed, std::nullopt));
}

void Session::answer_pub(uint64_t ref, Code c) {
  if (state_.load() == State::closed) return;
  if (c == Code::ok) send_ok(3, ref);
  else send_err(c, "the bus did not confirm that it received the message", 3, ref);
}

void Session::on_sub(const proto::Sub& s, const proto::DecodeResult& r) {
  if (r.code != Code::ok) return send_err(r.code, r.detail, 4, s.sid);
  // Durable consumption (docs/protocol.md section 16): session_durable.cpp.
  if (s.opts.type == proto::mp::Type::map && !s.opts.map.empty()) return on_durable_sub(s);
  const TenantConfig& c = cfg();
  RuleCheck rc;
  if (!admit_sub(s, c, rc)) return;
  auto st = std::make_shared<SubState>();
  st->sid = s.sid;
  st->subject = s.subject;
  st->queue = s.queue ? std::string(*s.queue) : std::string{};
  st->mapping = map_subscription(c, s.subject);
  st->own_prefix = c.prefix;
  st->filter = rc.needs_filter;
  if (st->filter) st->deny = c.permissions.subscribe.deny;
  std::weak_ptr<Session> weak = weak_from_this();
  // The OK waits until the bus has the subscription (a NATS round trip). Meanwhile this connection's
  // later frames wait too (the transport holds them), so that they see the subscription live, but
  // the I/O thread serves everyone else.
  sub_pending_ = true;
  // Queue groups are per tenant (docs/protocol.md section 10): on the bus the group's name carries the
  // tenant's, so two tenants' groups of one name on a shared (imported) subject stay apart.
  const std::string bus_queue = st->queue.empty() ? std::string{} : tenant_->name() + "." + st->queue;
  st->bus_id = server_.bus().subscribe_async(
      st->mapping.bus_subject, bus_queue,
      [weak, st](const BusMessagePtr& m) {
        if (!st->live.load(std::memory_order_acquire)) return;
        if (auto self = weak.lock()) self->deliver(st, m);
      },
      CodeFn([weak, st, ex = ex_](Code code) {
        auto self = weak.lock();
        if (!self) return;
        // The OK is queued here, on the bus's thread, before any MSG the bus delivers after it.
        if (code == Code::ok) self->send_ok(4, st->sid);
        asio::post(ex, [self, st, code] { self->finish_sub(st, code); });
      }));
  if (st->bus_id == 0) {
    sub_pending_ = false;
    st->confirmed = true;  // nothing to confirm
    return send_err(Code::bus_unavailable, "the bus refused the subscription", 4, s.sid);
  }
  {
    std::lock_guard lk(subs_mu_);
    subs_.emplace(s.sid, st);
  }
  sub_count_.store(subs_.size(), std::memory_order_relaxed);
}

bool Session::admit_sub(const proto::Sub& s, const TenantConfig& c, RuleCheck& rc) {
  if (subs_.count(s.sid)) {
    send_err(Code::sid_in_use, "sid " + std::to_string(s.sid) + " is in use", 4, s.sid);
    return false;
  }
  if (subs_.size() >= c.limits.max_subscriptions) {
    send_err(Code::too_many_subscriptions,
             "the connection has " + std::to_string(subs_.size()) + " subscriptions (the limit)", 4, s.sid);
    return false;
  }
  rc = subscription_allowed(c.permissions.subscribe, s.subject);
  if (!rc.allowed) {
    send_err(Code::permission_denied, "subscribe to '" + std::string(s.subject) + "' is not permitted", 4, s.sid);
    return false;
  }
  return true;
}

void Session::finish_sub(const std::shared_ptr<SubState>& st, Code code) {
  if (st->confirmed) return;
  st->confirmed = true;
  sub_pending_ = false;
  if (state_.load() == State::closed) return;
  if (auto it = subs_.find(st->sid); it != subs_.end() && it->second == st) {
    if (code != Code::ok) {
      // The bus server refused it (the gateway's own bus user may not subscribe there): it is gone.
      st->live.store(false, std::memory_order_release);
      {
        std::lock_guard lk(subs_mu_);
        subs_.erase(it);
      }
      sub_count_.store(subs_.size(), std::memory_order_relaxed);
      send_err(code, "the bus refused the subscription to '" + st->subject + "'", 4, st->sid);
    }
  }
  flush();
  if (transport_) transport_->resume_read();  // the frames that waited for this OK
}

void Session::on_unsub(const proto::Unsub& u) {
  auto it = subs_.find(u.sid);
  if (it == subs_.end()) return;  // idempotent
  if (u.max_msgs == 0) return remove_sub(u.sid);
  it->second->remaining.store(u.max_msgs);
}

void Session::remove_sub(uint32_t sid) {
  auto it = subs_.find(sid);
  if (it == subs_.end()) return;
  it->second->live.store(false, std::memory_order_release);
  if (it->second->is_durable) end_durable(*it->second);
  else server_.bus().unsubscribe(it->second->bus_id);
  {
    std::lock_guard lk(subs_mu_);
    subs_.erase(it);
  }
  sub_count_.store(subs_.size(), std::memory_order_relaxed);
}

void Session::on_req(const proto::Req& q, const proto::DecodeResult& r) {
  msgs_in_.fetch_add(1, std::memory_order_relaxed);
  if (r.code != Code::ok) return send_res(q.req_id, r.code, r.detail);
  if (inflight_.contains(q.req_id))
    return send_res(q.req_id, Code::duplicate_request_id, "req_id " + std::to_string(q.req_id) + " is in flight");
  if (q.payload.size() > max_payload_)
    return send_res(q.req_id, Code::payload_too_large,
                    "payload of " + std::to_string(q.payload.size()) + " bytes is above max_payload");
  const TenantConfig& c = cfg();
  if (q.subject.starts_with(kInbox))  // a reply subject is answered with PUB, never requested
    return send_res(q.req_id, Code::permission_denied,
                    "'" + std::string(q.subject.substr(0, 64)) + "' is a reply subject: answer it with PUB, not REQ");
  if (!subject_allowed(c.permissions.request, q.subject))
    return send_res(q.req_id, Code::permission_denied, "request to '" + std::string(q.subject) + "' is not permitted");
  if (!tenant_->try_acquire_request())
    return send_res(q.req_id, Code::too_many_requests,
                    "tenant '" + tenant_->name() + "' has " + std::to_string(c.limits.max_inflight_requests) +
                        " requests in flight (the limit)");
  const auto& gc = server_.config();
  uint64_t timeout = q.timeout_ms ? q.timeout_ms : gc.request_timeout_ms;
  timeout = std::min<uint64_t>(timeout, gc.max_request_timeout_ms);
  thread_local std::string subject, headers;
  map_outbound_subject(c, q.subject, subject);
  encode_headers_with_tenant(q.headers, headers);
  auto msg = std::make_shared<BusMessage>(subject, std::string_view{}, headers, q.payload);
  tenant_->msgs_in.fetch_add(1, std::memory_order_relaxed);
  tenant_->bytes_in.fetch_add(q.payload.size(), std::memory_order_relaxed);
  server_.metrics().requests_total.fetch_add(1, std::memory_order_relaxed);
  server_.metrics().requests_inflight.fetch_add(1, std::memory_order_relaxed);

  const auto now = Clock::now();
  RequestTable::Entry& inf = inflight_.add(q.req_id, now, timeout);
  inflight_count_.store(inflight_.size(), std::memory_order_relaxed);
  const uint32_t req_id = q.req_id;
  std::weak_ptr<Session> weak = weak_from_this();
  // The token is filled in below; the reply callback always runs later, on this executor.
  auto token_holder = std::make_shared<uint64_t>(0);
  inf.token = server_.bus().request(msg, [weak, req_id, token_holder, ex = ex_](Code st, const BusMessagePtr& m) {
    asio::post(ex, [weak, req_id, token_holder, st, m] {
      if (auto self = weak.lock()) self->on_bus_reply(req_id, *token_holder, st, m);
    });
  });
  *token_holder = inf.token;
  arm_request_timer(inf.deadline);
}

void Session::arm_request_timer(Clock::time_point deadline) {
  if (!inflight_.arm(deadline)) return;
  request_timer_.expires_at(deadline);
  request_timer_.async_wait([weak = weak_from_this()](const boost::system::error_code& ec) {
    if (ec) return;
    if (auto self = weak.lock()) self->on_request_timer();
  });
}

void Session::on_request_timer() {
  Clock::time_point next;
  for (const auto& [req_id, inf] : inflight_.expire(Clock::now(), next)) {
    server_.bus().cancel_request(inf.token);
    send_res(req_id, Code::request_timeout, "no reply within " + std::to_string(inf.timeout_ms) + " ms");
    request_done();
  }
  if (next != Clock::time_point::max()) arm_request_timer(next);
  flush();
}

void Session::on_bus_reply(uint32_t req_id, uint64_t token, Code status, const BusMessagePtr& m) {
  const auto* inf = inflight_.find(req_id, token);
  if (!inf) return;  // timed out or cancelled
  const auto started = inf->started;
  if (status == Code::ok && m) {
    std::string frame;
    proto::encode_res_framed(frame, req_id, 0, m->payload, m->headers);
    if (frame.size() > max_frame_ + 4) {
      send_res(req_id, Code::payload_too_large,
               "the reply of " + std::to_string(frame.size() - 4) + " bytes is above max_frame");
    } else if (std::lock_guard lk(out_mu_); admit_locked(frame.size())) {
      out_.buf() += frame;
      budget_.report(out_.pending());
      msgs_out_.fetch_add(1, std::memory_order_relaxed);
      bytes_out_.fetch_add(frame.size(), std::memory_order_relaxed);
    }
  } else {
    send_res(req_id, status,
             status == Code::no_responders     ? "no responders are subscribed to the request subject"
             : status == Code::request_timeout ? "the bus answered that the request timed out"
             : status == Code::internal_error  ? "the bus answered with a status instead of a reply"
                                               : "the bus is unavailable");
  }
  server_.metrics().observe_latency_us(static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - started).count()));
  finish_request(req_id);
  flush();
}

void Session::finish_request(uint32_t req_id) {
  if (inflight_.erase(req_id)) request_done();  // the request timer is not moved: it skips requests that are gone
}

void Session::request_done() {
  inflight_count_.store(inflight_.size(), std::memory_order_relaxed);
  tenant_->release_request();
  server_.metrics().requests_inflight.fetch_sub(1, std::memory_order_relaxed);
}

// ---------------------------------------------------------------- outbound

void Session::encode_headers_with_tenant(const proto::Headers& h, std::string& out) const {
  out.clear();
  proto::mp::Writer w(out);
  w.map_header(static_cast<uint32_t>(h.size() + 1));
  for (const auto& e : h) {
    w.str(e.key);
    w.str(e.value);
  }
  w.str(proto::kTenantHeader);
  w.str(tenant_->name());
}

void Session::deliver(const std::shared_ptr<SubState>& sub, const BusMessagePtr& m) {
  if (!lane_->offer(shared_from_this(), sub, m))
    server_.metrics().backlog_drops.fetch_add(1, std::memory_order_relaxed);
}

bool Session::lane_deliver(const std::shared_ptr<void>& s, const BusMessagePtr& m) {
  auto& sub = *static_cast<SubState*>(s.get());
  if (!sub.live.load(std::memory_order_acquire)) return false;
  auto subject = map_back(sub.mapping, m->subject);
  if (!subject) return false;
  if (sub.filter) {
    for (const auto& d : sub.deny)
      if (proto::subject_matches(d, *subject)) return false;
  }
  bool congested = false;
  queue_msg(sub, *m, *subject, false, 0, 0, &congested);
  return congested;
}

bool Session::queue_msg(SubState& sub, const BusMessage& m, std::string_view subject, bool durable,
                        uint64_t delivery_id, uint32_t attempt, bool* congested) {
  // Anything on the bus may publish: a subject that is not UTF-8 cannot be a MSG subject (a str),
  // so the message is not delivered (docs/protocol.md section 11, "From the bus").
  if (!proto::is_valid_utf8(subject)) {
    server_.metrics().bus_messages_dropped.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  bool last = false;
  if (sub.remaining.load(std::memory_order_relaxed) != 0) {
    const uint64_t before = sub.remaining.fetch_sub(1);
    if (before == 0) return false;  // raced past the limit
    last = before == 1;
    if (last) sub.live.store(false);
  }
  bool queued = false;
  {
    std::unique_lock lk(out_mu_);
    if (state_.load() == State::closed || closing_) return false;
    // A durable delivery is answered with ACK: it carries no reply subject (docs/protocol.md 16.2).
    // Reply grants are bounded per tenant the message came from (reply_grants.hpp).
    const std::string reply =
        durable || m.reply_to.empty()
            ? std::string{}
            : grants_.map(m.reply_to, sub.own_prefix, packed_header(m.headers, proto::kTenantHeader));
    const size_t before = out_.buf().size();
    proto::encode_msg_framed(out_.buf(), sub.sid, subject, m.payload, m.headers, reply, delivery_id, attempt);
    const size_t n = out_.buf().size() - before;
    if (n > max_frame_ + 4) {
      out_.buf().resize(before);
      proto::encode_err_framed(out_.buf(), Code::payload_too_large,
                               "a message of " + std::to_string(n - 4) + " bytes on '" +
                                   std::string(subject.substr(0, 64)) + "' is above max_frame and was not delivered",
                               4, sub.sid);
      server_.metrics().count_error(Code::payload_too_large);
      schedule_flush_locked();
    } else if (!admit_locked(0)) {
      out_.buf().resize(before);
    } else {
      queued = true;
      msgs_out_.fetch_add(1, std::memory_order_relaxed);
      bytes_out_.fetch_add(n, std::memory_order_relaxed);
      tenant_->msgs_out.fetch_add(1, std::memory_order_relaxed);
      tenant_->bytes_out.fetch_add(m.payload.size(), std::memory_order_relaxed);
      schedule_flush_locked();
      // Producer flow control (not for durable deliveries, whose pace is the consumer's window).
      if (congested && !stall_spent_ && !lane_waiting_ && out_.past_half()) *congested = true;
    }
  }
  if (last) {
    const uint32_t sid = sub.sid;
    asio::post(ex_, [self = shared_from_this(), sid] { self->remove_sub(sid); });
  }
  return queued;
}

bool Session::peer_acked_more_locked() {
  const uint64_t acked = tcp_bytes_acked(fd_.load(std::memory_order_relaxed));
  const bool more = acked > acked_mark_;
  acked_mark_ = acked;
  return more;
}

// ---------------------------------------------------------------- producer flow control

void Session::lane_wait(const std::shared_ptr<DeliveryLane>& lane) {
  asio::post(ex_, [self = shared_from_this(), lane] { self->start_lane_wait(lane); });
}

void Session::start_lane_wait(const std::shared_ptr<DeliveryLane>& lane) {
  bool ready;
  {
    std::lock_guard lk(out_mu_);
    ready = state_.load() == State::closed || closing_ || stall_spent_ || !out_.past_half();
    if (!ready) {
      lane_waiting_ = lane;
      writes_mark_ = out_.writes_done();
      peer_acked_more_locked();  // the mark to compare with at the next look
    }
  }
  if (ready) return resume_lane(lane);
  arm_lane_timer();
}

void Session::on_lane_timer() {
  std::shared_ptr<DeliveryLane> lane;
  {
    std::lock_guard lk(out_mu_);
    if (!lane_waiting_) return;
    const bool progress = out_.writes_done() != writes_mark_;
    const bool acked = peer_acked_more_locked();
    writes_mark_ = out_.writes_done();
    if (progress || acked) {
      idle_stalls_ = 0;
    } else if (++idle_stalls_ >= kIdleStallsToGiveUp) {
      // The client reads nothing: the tenant's deliveries stop waiting for it until its queue empties.
      stall_spent_ = true;
      lane.swap(lane_waiting_);
      spdlog::debug("session={} made no write progress in {} ms; not waited for again until its queue empties",
                    session_id_, kProducerStall.count() * kIdleStallsToGiveUp);
    }
  }
  if (lane) return resume_lane(std::move(lane));
  arm_lane_timer();
}

void Session::arm_lane_timer() {
  lane_timer_.expires_after(kProducerStall);
  lane_timer_.async_wait([weak = weak_from_this()](const boost::system::error_code& ec) {
    if (ec) return;
    if (auto self = weak.lock()) self->on_lane_timer();
  });
}

void Session::resume_lane(std::shared_ptr<DeliveryLane> lane) {
  if (!lane) return;
  lane_timer_.cancel();
  if (!lane->resume(this, kLaneBudget)) return;
  // More backlog than one turn: go on later on this thread, letting other connections run between.
  struct Drain {
    std::shared_ptr<DeliveryLane> lane;
    asio::any_io_executor ex;
    void operator()() const {
      if (lane->drain(kLaneBudget)) asio::post(ex, *this);
    }
  };
  asio::post(ex_, Drain{std::move(lane), ex_});
}

void Session::lane_overflow(size_t backlog_bytes) {
  asio::post(ex_, [self = shared_from_this(), backlog_bytes] {
    std::shared_ptr<DeliveryLane> lane;
    {
      std::lock_guard lk(self->out_mu_);
      lane.swap(self->lane_waiting_);
      if (self->out_.mark_slow()) {
        self->server_.metrics().slow_consumer_disconnects.fetch_add(1, std::memory_order_relaxed);
      }
    }
    self->fatal(Code::slow_consumer, "the client did not read fast enough: " + std::to_string(backlog_bytes) +
                                         " bytes for its tenant waited behind it (max_backlog_bytes)");
    self->resume_lane(std::move(lane));
  });
}

bool Session::admit_locked(size_t extra) {
  // The tenant's or the node's budget is full: a connection holding a fair part of its own bound is
  // cut (it frees what it holds); one that reads along is not (docs/protocol.md section 15).
  if (const char* full = budget_.overrun(extra); full && out_.pending() >= out_.max_pending() / 4) {
    over_budget_locked(full);
    return false;
  }
  switch (out_.admit(extra)) {
    case OutboundQueue::Admit::over:
      if (out_.mark_slow()) {
        server_.metrics().slow_consumer_disconnects.fetch_add(1, std::memory_order_relaxed);
        asio::post(ex_, [self = shared_from_this()] {
          self->fatal(Code::slow_consumer, "the client did not read fast enough: outbound queue passed " +
                                               std::to_string(self->out_.max_pending()) + " bytes");
        });
      }
      return false;
    case OutboundQueue::Admit::warn:
      proto::encode_err_framed(out_.buf(), Code::slow_consumer_warning,
                               "outbound queue passed half of " + std::to_string(out_.max_pending()) + " bytes");
      server_.metrics().count_error(Code::slow_consumer_warning);
      return true;
    default: return true;
  }
}

void Session::over_budget_locked(const char* which) {
  if (!out_.mark_slow()) return;
  server_.metrics().slow_consumer_disconnects.fetch_add(1, std::memory_order_relaxed);
  server_.metrics().budget_disconnects.fetch_add(1, std::memory_order_relaxed);
  asio::post(ex_, [self = shared_from_this(), which] {
    self->fatal(Code::slow_consumer, std::string("the client did not read fast enough and the bytes queued for ") +
                                         (std::string_view(which) == "max_queued_bytes" ? "this node" : "its tenant") +
                                         " reached " + which);
  });
}

bool Session::control_room_locked() {
  constexpr size_t kControlSlack = 64 * 1024;
  budget_.report(out_.pending());
  if (out_.pending() <= out_.max_pending() + kControlSlack) return true;
  if (out_.mark_slow()) {
    server_.metrics().slow_consumer_disconnects.fetch_add(1, std::memory_order_relaxed);
    asio::post(ex_, [self = shared_from_this()] {
      self->fatal(Code::slow_consumer, "the client did not read its answers: outbound queue passed " +
                                           std::to_string(self->out_.max_pending()) + " bytes");
    });
  }
  return false;
}

void Session::send_frame(const proto::Frame& f) {
  std::lock_guard lk(out_mu_);
  if (control_room_locked()) proto::encode_framed(f, out_.buf());
}

void Session::send_err(Code code, std::string_view message, uint64_t ref_op, uint64_t ref_id) {
  server_.metrics().count_error(code);
  std::lock_guard lk(out_mu_);
  if (control_room_locked()) proto::encode_err_framed(out_.buf(), code, message, ref_op, ref_id);
}

void Session::send_ok(uint64_t ref_op, uint64_t ref_id) {
  std::lock_guard lk(out_mu_);
  if (control_room_locked()) proto::encode_ok_framed(out_.buf(), ref_op, ref_id);
}

void Session::send_res(uint32_t req_id, Code status, std::string_view message) {
  server_.metrics().count_error(status);
  std::lock_guard lk(out_mu_);
  if (control_room_locked()) proto::encode_res_framed(out_.buf(), req_id, static_cast<uint64_t>(status), message, {});
}

bool Session::on_batch_end() {
  flush();
  if (sub_pending_) return false;  // finish_sub() resumes reading
  const bool published = std::exchange(published_, false);
  if (published && lane_ && lane_->busy()) {
    // Producer flow control: the tenant's deliveries wait for a slow consumer; its publishers on this
    // node pause until they are through (docs/protocol.md section 12, slow consumers).
    server_.metrics().producer_paces.fetch_add(1, std::memory_order_relaxed);
    paced_ = true;
    lane_->when_idle([weak = weak_from_this(), ex = ex_] {
      asio::post(ex, [weak] {
        if (auto self = weak.lock()) self->resume_paced();
      });
    });
    return false;
  }
  Bus& bus = server_.bus();
  if (!bus.congested()) return true;
  server_.metrics().bus_congestion_pauses.fetch_add(1, std::memory_order_relaxed);
  // Publisher flow control: stop reading this client until the bus has written its backlog.
  bus.when_drained([weak = weak_from_this(), ex = ex_] {
    asio::post(ex, [weak] {
      if (auto self = weak.lock(); self && self->transport_) self->transport_->resume_read();
    });
  });
  return false;
}

void Session::resume_paced() {
  if (!paced_) return;
  paced_ = false;
  if (transport_) transport_->resume_read();
}

void Session::schedule_flush_locked() {
  budget_.report(out_.pending());
  if (flush_posted_ || out_.writing()) return;
  flush_posted_ = true;
  asio::post(ex_, [self = shared_from_this()] { self->flush(); });
}

void Session::flush() {
  std::unique_lock lk(out_mu_);
  flush_posted_ = false;
  if (out_.writing() || !transport_) return;
  // Byte streams are written in slices, so that a slow reader shows progress often (flow control
  // looks for it) and one write never holds more than a slice of socket time.
  const std::string_view slice = out_.next_slice(transport_->byte_stream() ? kWriteSlice : 0);
  if (slice.empty()) {
    if (closing_) {
      lk.unlock();
      close_transport();
    }
    return;
  }
  lk.unlock();
  transport_->write(slice, [self = shared_from_this()](bool ok) { self->on_write(ok); });
}

void Session::on_write(bool ok) {
  std::shared_ptr<DeliveryLane> lane;
  {
    std::lock_guard lk(out_mu_);
    if (out_.written()) stall_spent_ = false;  // only after the queue has emptied
    budget_.report(out_.pending());
    if (lane_waiting_ && !out_.past_half()) lane.swap(lane_waiting_);
  }
  if (lane) resume_lane(std::move(lane));
  if (!ok) return close_transport();
  flush();
}

void Session::fatal(Code code, std::string_view message, uint64_t ref_op) {
  if (state_.load() == State::closed || closing_) return;
  server_.metrics().count_error(code);
  if (close_reason_.empty()) close_reason_ = std::string(proto::code_name(code)) + ": " + std::string(message);
  close_code_ = code;
  {
    std::lock_guard lk(out_mu_);
    proto::encode_err_framed(out_.buf(), code, message, ref_op);
    closing_ = true;
  }
  // Nothing more is delivered: stop the bus's callbacks at their first check, rather than at the
  // close (a peer that stopped reading takes up to kFatalWriteGrace to close).
  for (auto& [sid, st] : subs_) st->live.store(false, std::memory_order_release);
  handshake_timer_.cancel();
  heartbeat_timer_.cancel();
  drain_timer_.cancel();
  close_timer_.expires_after(kFatalWriteGrace);
  close_timer_.async_wait([weak = weak_from_this()](const boost::system::error_code& ec) {
    if (ec) return;
    if (auto self = weak.lock(); self && self->transport_) self->transport_->abort();
  });
  flush();
}

void Session::fail(Code code, std::string message) {
  fatal(code, message);
}

void Session::close_transport() {
  if (transport_) transport_->close(close_code_);
}

void Session::on_closed(std::string reason) {
  if (state_.exchange(State::closed) == State::closed) return;
  fd_.store(-1, std::memory_order_relaxed);
  transport_ = nullptr;
  if (close_reason_.empty()) close_reason_ = std::move(reason);
  cleanup();
  server_.metrics().connections_closed.fetch_add(1, std::memory_order_relaxed);
  spdlog::info("connection closed session={} tenant={} transport={} remote={} reason=\"{}\"", session_id_,
               tenant_ ? tenant_->name() : "-", transport_kind_, log_text(remote_), log_text(close_reason_, 512));
  server_.remove_session(id_);
}

void Session::cleanup() {
  close_timer_.cancel();
  std::shared_ptr<DeliveryLane> lane;
  {
    std::lock_guard lk(out_mu_);
    lane.swap(lane_waiting_);
  }
  resume_lane(std::move(lane));  // nothing waits for a closed connection
  handshake_timer_.cancel();
  heartbeat_timer_.cancel();
  drain_timer_.cancel();
  for (auto& [sid, st] : subs_) {
    st->live.store(false, std::memory_order_release);
    if (st->is_durable) end_durable(*st);
    else server_.bus().unsubscribe(st->bus_id);
  }
  {
    std::lock_guard lk(subs_mu_);
    subs_.clear();
  }
  request_timer_.cancel();
  for (const auto& [req_id, inf] : inflight_.take_all()) {
    server_.bus().cancel_request(inf.token);
    request_done();
  }
  if (counted_connection_) {
    tenant_->release_connection();
    counted_connection_ = false;
  }
  std::lock_guard lk(out_mu_);
  out_.clear();
  budget_.report(0, true);
  grants_.clear();
}

// ---------------------------------------------------------------- timers and server requests

void Session::arm_handshake_timer() {
  handshake_timer_.expires_after(std::chrono::milliseconds(server_.config().handshake_timeout_ms));
  handshake_timer_.async_wait([weak = weak_from_this()](const boost::system::error_code& ec) {
    if (ec) return;
    if (auto self = weak.lock(); self && self->state_ == State::handshake)
      self->fatal(Code::handshake_timeout, "no HELLO within " +
                                               std::to_string(self->server_.config().handshake_timeout_ms) + " ms");
  });
}

void Session::arm_heartbeat() {
  heartbeat_timer_.expires_after(std::chrono::milliseconds(heartbeat_ms_));
  heartbeat_timer_.async_wait([weak = weak_from_this()](const boost::system::error_code& ec) {
    if (ec) return;
    auto self = weak.lock();
    if (!self || self->state_ == State::closed || self->closing_) return;
    // A connection paced by flow control is not read: that is the gateway's doing, not idleness.
    if (!self->rx_since_tick_ && !self->paced_) {
      if (self->ping_outstanding_)
        return self->fatal(Code::idle_timeout, "nothing received for " + std::to_string(2 * self->heartbeat_ms_) + " ms");
      self->ping_outstanding_ = true;
      self->send_frame(proto::Ping{});
      self->flush();
    }
    self->rx_since_tick_ = false;
    self->arm_heartbeat();
  });
}

void Session::goaway(uint32_t delay_ms) {
  asio::post(ex_, [self = shared_from_this(), delay_ms] {
    const State st = self->state_.load();
    if (st == State::closed || self->closing_) return;
    if (st == State::handshake) return self->fatal(Code::shutting_down, "the gateway is shutting down");
    self->state_ = State::draining;
    proto::Goaway g;
    g.delay_ms = delay_ms;
    g.reason = "the gateway is draining; reconnect";
    self->send_frame(g);
    self->flush();
    self->drain_timer_.expires_after(std::chrono::milliseconds(delay_ms));
    self->drain_timer_.async_wait([weak = self->weak_from_this()](const boost::system::error_code& ec) {
      if (ec) return;
      if (auto s = weak.lock()) s->finish_drain();
    });
  });
}

void Session::finish_drain() {
  if (state_ != State::draining || closing_) return;
  // docs/protocol.md section 14: RES SHUTTING_DOWN for every REQ still in flight, then a fatal ERR.
  for (const auto& [req_id, inf] : inflight_.take_all()) {
    server_.bus().cancel_request(inf.token);
    send_res(req_id, Code::shutting_down, "the gateway is shutting down; send the request again elsewhere");
    request_done();
  }
  fatal(Code::shutting_down, "the gateway is shutting down; reconnect to another node");
}

void Session::shutdown(Code code, std::string message) {
  asio::post(ex_, [self = shared_from_this(), code, message = std::move(message)] { self->fatal(code, message); });
}

void Session::recheck_auth() {
  asio::post(ex_, [self = shared_from_this()] {
    if (!self->tenant_ || self->state_ == State::closed) return;
    if (!self->server_.registry().still_valid(*self->tenant_, self->token_digest_))
      return self->fatal(Code::auth_revoked, "the credentials of this connection were revoked");
    self->recheck_subscriptions();
  });
}

void Session::recheck_subscriptions() {
  if (closing_ || state_.load() == State::closed) return;
  const TenantConfig& c = cfg();
  std::vector<uint32_t> ended;
  for (const auto& [sid, st] : subs_) {
    const RuleCheck rc = subscription_allowed(c.permissions.subscribe, st->subject);
    bool same = rc.allowed;
    if (same && !st->is_durable) {
      // What the subscription sees depends on its mapping (stream imports), the namespace and the
      // deny list it filters with: any change ends it, and a new SUB gets the new rules.
      const Mapping m = map_subscription(c, st->subject);
      same = m.bus_subject == st->mapping.bus_subject && m.bus_prefix == st->mapping.bus_prefix &&
             m.client_prefix == st->mapping.client_prefix && c.prefix == st->own_prefix &&
             rc.needs_filter == st->filter && (!rc.needs_filter || st->deny == c.permissions.subscribe.deny);
    }
    if (!same) ended.push_back(sid);
  }
  for (const uint32_t sid : ended) {
    auto it = subs_.find(sid);
    const std::string subject = it->second->subject;
    remove_sub(sid);
    send_err(Code::permission_denied,
             "subscription to '" + subject + "' ended: the gateway's configuration no longer allows it as it was made",
             4, sid);
  }
  if (!ended.empty()) {
    spdlog::info("session={} tenant={}: {} subscriptions ended by the reload", session_id_, tenant_->name(),
                 ended.size());
    flush();
  }
}

std::vector<Session::SubInfo> Session::subscriptions() const {
  std::vector<SubInfo> out;
  std::lock_guard lk(subs_mu_);
  for (const auto& [sid, st] : subs_) out.push_back({sid, st->subject, st->queue, st->mapping.bus_subject});
  return out;
}

Session::Info Session::info() const {
  Info i;
  i.id = id_;
  i.session_id = session_id_;
  {
    std::lock_guard lk(meta_mu_);
    i.tenant = tenant_ ? tenant_->name() : "";
    i.name = client_name_;
  }
  i.transport = transport_kind_;
  i.remote = remote_;
  i.state = state_name(state_.load());
  i.subscriptions = sub_count_.load(std::memory_order_relaxed);
  i.inflight = inflight_count_.load(std::memory_order_relaxed);
  i.msgs_in = msgs_in_.load();
  i.msgs_out = msgs_out_.load();
  i.bytes_in = bytes_in_.load();
  i.bytes_out = bytes_out_.load();
  std::lock_guard lk(out_mu_);
  i.pending_bytes = out_.pending();
  return i;
}

}  // namespace busgate::gw
