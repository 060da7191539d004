// Durable consumption in the Session (docs/protocol.md section 16): durable SUBs, the delivery of
// MSGs with a delivery id and attempt, ACK / NAK / PROGRESS / TERM / CREDIT, and stored publishing.

#include <spdlog/spdlog.h>

#include <boost/asio/post.hpp>

#include "busgate/protocol/codec.hpp"
#include "busgate/protocol/subject.hpp"
#include "server.hpp"
#include "session.hpp"
#include "session_sub.hpp"

namespace busgate::gw {

namespace asio = boost::asio;
using proto::Code;

// Hands the bus's deliveries to the session; holds neither strongly, so a subscription that ended
// costs nothing.
class Session::DurableSinkImpl final : public DurableSink {
 public:
  DurableSinkImpl(std::weak_ptr<Session> session, std::weak_ptr<SubState> sub)
      : session_(std::move(session)), sub_(std::move(sub)) {}
  bool on_durable(const BusMessagePtr& msg, uint64_t delivery_id, uint32_t attempt) override {
    auto st = sub_.lock();
    if (!st || !st->live.load(std::memory_order_acquire)) return false;
    auto self = session_.lock();
    return self && self->deliver_durable(*st, msg, delivery_id, attempt);
  }

 private:
  std::weak_ptr<Session> session_;
  std::weak_ptr<SubState> sub_;
};

namespace {

bool durable_name_ok(std::string_view s) {
  if (s.empty() || s.size() > 64) return false;
  for (unsigned char c : s)
    if (!std::isalnum(c) && c != '-' && c != '_') return false;
  return true;
}

struct DurableOpts {
  std::string durable;
  uint64_t max_inflight = 0;  // 0: not given
  bool deliver_all = true;
  bool credit = false;
};

// Reads SUB opts; on failure sets code and why.
bool parse_opts(const proto::mp::Value& opts, DurableOpts& o, Code& code, std::string& why) {
  using proto::mp::Type;
  bool has_durable = false;
  std::string first_other;
  for (const auto& [k, v] : opts.map) {
    if (k == "durable") {
      has_durable = true;
      if (v.type != Type::str || !durable_name_ok(v.s)) {
        code = Code::invalid_option;
        why = "'durable' must be 1 to 64 letters, digits, '-' and '_'";
        return false;
      }
      o.durable = std::string(v.s);
    } else if (k == "ack") {
      if (v.type != Type::str || v.s != "explicit") {
        code = Code::invalid_option;
        why = "'ack' of a durable subscription must be \"explicit\"";
        return false;
      }
    } else if (k == "max_inflight") {
      if (v.type != Type::uint || v.u == 0 || v.u > UINT32_MAX) {
        code = Code::invalid_option;
        why = "'max_inflight' must be an integer from 1 to 4294967295";
        return false;
      }
      o.max_inflight = v.u;
    } else if (k == "deliver") {
      if (v.type != Type::str || (v.s != "all" && v.s != "new")) {
        code = Code::invalid_option;
        why = "'deliver' must be \"all\" or \"new\"";
        return false;
      }
      o.deliver_all = v.s == "all";
    } else if (k == "flow") {
      if (v.type != Type::str || v.s != "credit") {
        code = Code::invalid_option;
        why = "'flow' must be \"credit\"";
        return false;
      }
      o.credit = true;
    } else {
      code = Code::not_supported;
      why = "subscription option '" + std::string(k.substr(0, 32)) + "' is not supported by this gateway";
      return false;
    }
  }
  if (!has_durable) {
    code = Code::not_supported;
    why = "subscription options without 'durable' are not supported by this gateway";
    return false;
  }
  return true;
}

}  // namespace

void Session::on_durable_sub(const proto::Sub& s) {
  DurableOpts o;
  Code code = Code::ok;
  std::string why;
  if (!parse_opts(s.opts, o, code, why)) return send_err(code, why, 4, s.sid);
  const TenantConfig& c = cfg();
  RuleCheck rc;
  if (!admit_sub(s, c, rc)) return;
  // A durable consumer hands each message to one subscriber: it cannot skip the denied ones.
  if (rc.needs_filter)
    return send_err(Code::permission_denied, "subscribe to '" + std::string(s.subject) + "' is not permitted", 4,
                    s.sid);
  const StreamConfig* stream = nullptr;
  for (const auto& st : c.streams)
    for (const auto& p : st.subjects)
      if (!stream && pattern_covers(p, s.subject)) stream = &st;
  if (!stream)
    return send_err(Code::unknown_stream, "no stream of the tenant stores '" + std::string(s.subject) + "'", 4, s.sid);

  ConsumerSpec spec;
  uint32_t cap = 0;
  const ConsumerConfig* declared = nullptr;
  for (const auto& cc : c.consumers)
    if (cc.name == o.durable) declared = &cc;
  if (declared) {
    if (declared->stream != stream->name)
      return send_err(Code::invalid_option,
                      "consumer '" + o.durable + "' reads stream '" + declared->stream + "', which does not store '" +
                          std::string(s.subject) + "'",
                      4, s.sid);
    if (declared->subject != s.subject)
      return send_err(Code::invalid_option,
                      "consumer '" + o.durable + "' takes '" + declared->subject + "', not '" + std::string(s.subject) +
                          "'",
                      4, s.sid);
    spec = consumer_spec(c, *stream, *declared);
  } else {
    ConsumerConfig made;
    made.name = o.durable;
    made.stream = stream->name;
    made.subject = std::string(s.subject);
    made.settings = c.consumer_defaults;
    made.dead_letter = "deadletter." + o.durable;
    const uint32_t ceiling = c.limits.max_consumer_inflight;
    made.max_inflight = o.max_inflight ? static_cast<uint32_t>(std::min<uint64_t>(o.max_inflight, ceiling)) : ceiling;
    if (proto::subject_matches(made.subject, made.dead_letter))
      return send_err(Code::invalid_option,
                      "'" + made.subject + "' would take the consumer's own dead letters ('" + made.dead_letter + "')",
                      4, s.sid);
    spec = consumer_spec(c, *stream, made);
    spec.declared = false;
    spec.deliver_all = o.deliver_all;
  }
  cap = spec.max_inflight;
  DurableWindow window;
  window.limit = o.max_inflight ? static_cast<uint32_t>(std::min<uint64_t>(o.max_inflight, cap)) : cap;
  window.credit_mode = o.credit;

  DurableBus* bus = server_.bus().durable();
  if (!bus) return send_err(Code::not_supported, "this bus has no durable consumption", 4, s.sid);

  auto st = new_sub(s, c);
  st->is_durable = true;
  st->credit_mode = o.credit;
  {
    std::lock_guard lk(subs_mu_);
    subs_.emplace(s.sid, st);
  }
  sub_count_.store(subs_.size(), std::memory_order_relaxed);
  // As for plain SUBs, the connection's later frames wait until the bus has answered.
  sub_pending_ = true;
  std::weak_ptr<Session> weak = weak_from_this();
  auto sink = std::make_shared<DurableSinkImpl>(weak, st);
  bus->subscribe_durable(std::move(spec), window, c.limits.max_consumers, std::move(sink),
                         [weak, st, ex = ex_](Code result, std::string message,
                                              std::shared_ptr<DurableSubscription> sub) {
                           asio::post(ex, [weak, st, result, message = std::move(message), sub = std::move(sub)]() mutable {
                             if (auto self = weak.lock()) self->finish_durable_sub(st, result, message, std::move(sub));
                             else if (sub) sub->close();
                           });
                         });
}

void Session::finish_durable_sub(const std::shared_ptr<SubState>& st, Code code, const std::string& why,
                                 std::shared_ptr<DurableSubscription> sub) {
  if (st->confirmed) return;
  st->confirmed = true;
  sub_pending_ = false;
  auto it = subs_.find(st->sid);
  const bool current = it != subs_.end() && it->second == st && state_.load() != State::closed;
  if (code != Code::ok || !sub || !current) {
    if (sub) sub->close();
    if (current) {
      {
        std::lock_guard lk(subs_mu_);
        subs_.erase(it);
      }
      sub_count_.store(subs_.size(), std::memory_order_relaxed);
      send_err(code == Code::ok ? Code::internal_error : code, why, 4, st->sid);
    }
  } else {
    st->durable = std::move(sub);
    send_ok(4, st->sid);
  }
  flush();
  if (st->durable) st->durable->start();  // after the OK: MSG never precedes it
  if (transport_) transport_->resume_read();
}

bool Session::deliver_durable(SubState& sub, const BusMessagePtr& m, uint64_t delivery_id, uint32_t attempt) {
  const auto subject = map_back(sub.mapping, m->subject);
  return subject && queue_msg(sub, *m, *subject, true, delivery_id, attempt);
}

void Session::on_settle(uint64_t op, uint32_t sid, uint64_t delivery_id, uint64_t delay_ms, std::string_view reason) {
  const auto it = subs_.find(sid);
  if (it == subs_.end() || !it->second->durable)
    return send_err(Code::unknown_sid, "sid " + std::to_string(sid) + " is not a live durable subscription", op, sid);
  DurableSubscription& d = *it->second->durable;
  bool ok = false;
  switch (op) {
    case 14: ok = d.ack(delivery_id); break;
    case 15: ok = d.nak(delivery_id, delay_ms); break;
    case 17: ok = d.progress(delivery_id); break;
    default: ok = d.term(delivery_id, std::string(reason.substr(0, 1024))); break;
  }
  if (!ok)
    send_err(Code::unknown_delivery,
             "delivery " + std::to_string(delivery_id) + " is not outstanding on sid " + std::to_string(sid), op, sid);
}

void Session::on_credit(const proto::Credit& c) {
  const auto it = subs_.find(c.sid);
  if (it == subs_.end() || !it->second->durable)
    return send_err(Code::unknown_sid, "sid " + std::to_string(c.sid) + " is not a live durable subscription", 16,
                    c.sid);
  if (!it->second->credit_mode)
    return send_err(Code::invalid_option, "sid " + std::to_string(c.sid) + " was not subscribed with flow: credit", 16,
                    c.sid);
  it->second->durable->add_credit(c.credits);
}

void Session::end_durable(SubState& st) {
  if (st.durable) {
    st.durable->close();  // releases its outstanding deliveries at once
    st.durable.reset();
  }
}

bool Session::stream_stores(const TenantConfig& c, std::string_view bus_subject) {
  if (!bus_subject.starts_with(c.prefix)) return false;
  const auto rel = bus_subject.substr(c.prefix.size());
  for (const auto& st : c.streams)
    for (const auto& pat : st.subjects)
      if (proto::subject_matches(pat, rel)) return true;
  return false;
}

bool Session::publish_stored(const proto::Pub& p, const BusMessagePtr& msg) {
  DurableBus* bus = server_.bus().durable();
  if (!bus) return false;
  const uint64_t ref = p.ack;
  std::weak_ptr<Session> weak = weak_from_this();
  bus->publish_stored(msg, p.msg_id ? std::string(*p.msg_id) : std::string{},
                      [weak, ref, ex = ex_](Code code, std::string why) {
                        if (!ref && code == Code::ok) return;
                        asio::post(ex, [weak, ref, code, why = std::move(why)] {
                          auto self = weak.lock();
                          if (!self || self->state_.load() == State::closed) return;
                          if (code == Code::ok) {
                            self->send_ok(3, ref);
                          } else {
                            // The bus names bus subjects; the client knows its own.
                            std::string text = why.empty() ? "the message was not stored" : why;
                            const std::string& prefix = self->cfg().prefix;
                            for (size_t at; !prefix.empty() && (at = text.find(prefix)) != std::string::npos;)
                              text.erase(at, prefix.size());
                            self->send_err(code, text, 3, ref);
                          }
                          self->flush();
                        });
                      });
  return true;
}

}  // namespace busgate::gw
