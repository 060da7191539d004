// Session: plain subscriptions. SUB, UNSUB, and each message from the bus on its way through the
// tenant's delivery lane into the outbound queue as MSG (docs/protocol.md sections 7.4-7.6, 10, 12.3).
// Durable subscriptions: session_durable.cpp.
#include <boost/asio/post.hpp>

#include "busgate/protocol/msgpack.hpp"
#include "busgate/protocol/subject.hpp"
#include "server.hpp"
#include "session.hpp"
#include "session_sub.hpp"

namespace busgate::gw {

namespace asio = boost::asio;
using proto::Code;
using Clock = std::chrono::steady_clock;

void Session::on_sub(const proto::Sub& s, const proto::DecodeResult& r) {
  if (r.code != Code::ok) return send_err(r.code, r.detail, 4, s.sid);
  // Durable consumption (docs/protocol.md section 16): session_durable.cpp.
  if (s.opts.type == proto::mp::Type::map && !s.opts.map.empty()) return on_durable_sub(s);
  const TenantConfig& c = cfg();
  RuleCheck rc;
  if (!admit_sub(s, c, rc)) return;
  auto st = new_sub(s, c);
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

std::shared_ptr<Session::SubState> Session::new_sub(const proto::Sub& s, const TenantConfig& c) const {
  auto st = std::make_shared<SubState>();
  st->sid = s.sid;
  st->subject = s.subject;
  st->queue = s.queue ? std::string(*s.queue) : std::string{};
  st->mapping = map_subscription(c, s.subject);
  st->own_prefix = c.prefix;
  return st;
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
      tenant_metrics().count_error(Code::payload_too_large);
      schedule_flush_locked();
    } else if (!admit_locked(0)) {
      out_.buf().resize(before);
    } else {
      queued = true;
      msgs_out_.fetch_add(1, std::memory_order_relaxed);
      bytes_out_.fetch_add(n, std::memory_order_relaxed);
      tenant_->msgs_out.fetch_add(1, std::memory_order_relaxed);
      tenant_->bytes_out.fetch_add(m.payload.size(), std::memory_order_relaxed);
      if (reply.empty() || !write_through_locked()) schedule_flush_locked();
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

}  // namespace busgate::gw
