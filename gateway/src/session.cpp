// Session: one client connection's life. Handshake, frame dispatch, heartbeats, drain, the fatal
// close, and re-checks after a reload. The rest is in session_publish.cpp (PUB, REQ),
// session_subscribe.cpp (SUB, deliveries), session_durable.cpp (durable consumption) and
// session_outbound.cpp (the outbound queue and flow control).
#include "session.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/post.hpp>
#include <cmath>
#include <random>
#include <utility>

#include "busgate/protocol/msgpack.hpp"
#include "busgate/protocol/subject.hpp"
#include "handshake.hpp"
#include "log_text.hpp"
#include "server.hpp"
#include "session_sub.hpp"

namespace busgate::gw {

namespace asio = boost::asio;
using proto::Code;
using Clock = std::chrono::steady_clock;

namespace {

// After a fatal ERR is queued, the peer has this long to read what is queued before it; then the
// connection is closed without waiting (a stalled peer must not hold the session forever).
constexpr auto kFatalWriteGrace = std::chrono::seconds(5);

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
  if (auto refused = server_.refusals().match(auth->tenant->name(), h.name ? h.name->substr(0, 128) : std::string_view{},
                                              address, auth->digest, now)) {
    server_.metrics().admin_refused.fetch_add(1, std::memory_order_relaxed);
    const auto left_ms = std::chrono::duration_cast<std::chrono::milliseconds>(refused->until - now).count();
    return fatal(Code::closed_by_admin,
                 "refused by an operator for another " + std::to_string((left_ms + 999) / 1000) + " s (refusal " +
                     refused->id + ", by " + by_name(refused->by) + ")",
                 1);
  }
  if (server_.draining()) return fatal(Code::shutting_down, "the gateway is shutting down", 1);
  if (!auth->tenant->try_acquire_connection())
    return fatal(Code::too_many_connections, "tenant '" + auth->tenant->name() + "' reached its connection limit", 1);
  counted_connection_ = true;
  {
    std::lock_guard lk(meta_mu_);  // info() reads them from other threads
    tenant_ = auth->tenant;
    tenant_metrics_.store(&tenant_->metrics, std::memory_order_release);
    if (h.name) client_name_ = std::string(h.name->substr(0, 128));
    token_digest_ = std::move(auth->digest);
  }
  {
    const auto& g = server_.config();
    lane_ = tenant_->lane(g.max_backlog_bytes, g.max_tenant_queued_bytes, &server_.queued_budget(),
                          &server_.metrics().budget_drops);
    std::lock_guard lk(out_mu_);
    budget_.attach(&tenant_->queued_budget(g.max_tenant_queued_bytes), &server_.queued_budget());
  }
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

void Session::fatal(Code code, std::string_view message, uint64_t ref_op) {
  if (state_.load() == State::closed || closing_) return;
  tenant_metrics().count_error(code);
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
  {
    std::lock_guard lk(out_mu_);  // write_through_locked() on other threads reads it under the lock
    transport_ = nullptr;
  }
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
    if (inf.claim_here()) request_done();  // else the reply gave its slot back
  }
  inflight_count_.store(0, std::memory_order_relaxed);
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
    if (!inf.claim_here()) continue;  // answered from the bus's thread just now
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
      same = map_subscription(c, st->subject) == st->mapping && c.prefix == st->own_prefix &&
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

Session::ClientKey Session::client_key() const {
  ClientKey k;
  k.address = std::string(address_of(remote_));
  std::lock_guard lk(meta_mu_);
  if (tenant_) k.tenant = tenant_->name();
  k.name = client_name_;
  k.token_digest = token_digest_;
  return k;
}

TenantMetrics& Session::tenant_metrics() const {
  TenantMetrics* t = tenant_metrics_.load(std::memory_order_acquire);
  return t ? *t : server_.metrics().unauthenticated;
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
