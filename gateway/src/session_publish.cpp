// Session: what a client sends to the bus. PUB (and its confirmation), REQ with its deadline and
// the reply from the bus (docs/protocol.md sections 7.3, 7.7 and 12).
#include <boost/asio/post.hpp>
#include <optional>

#include "busgate/protocol/msgpack.hpp"
#include "busgate/protocol/subject.hpp"
#include "server.hpp"
#include "session.hpp"
#include "session_sub.hpp"

namespace busgate::gw {

namespace asio = boost::asio;
using proto::Code;
using Clock = std::chrono::steady_clock;

namespace {
constexpr std::string_view kInbox = "_INBOX.";
}  // namespace

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
  tenant_->msgs_in.fetch_add(1, std::memory_order_relaxed);
  tenant_->bytes_in.fetch_add(p.payload.size(), std::memory_order_relaxed);
  Code rc;
  if (stored && (ref || p.msg_id)) {
    auto msg = std::make_shared<const BusMessage>(subject, reply, headers, p.payload);
    if (publish_stored(p, msg)) return;
    rc = server_.bus().publish(std::move(msg), ref != 0);
  } else {
    rc = server_.bus().publish_copy(subject, reply, headers, p.payload, ref != 0);
  }
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

void Session::on_req(const proto::Req& q, const proto::DecodeResult& r) {
  msgs_in_.fetch_add(1, std::memory_order_relaxed);
  if (r.code != Code::ok) return send_res(q.req_id, r.code, r.detail);
  if (const auto* inf = inflight_.find(q.req_id)) {
    // A request answered from the bus's thread whose bookkeeping has not run yet is over for the
    // client (it may have its RES already): its req_id is free again.
    if (!inf->replied())
      return send_res(q.req_id, Code::duplicate_request_id, "req_id " + std::to_string(q.req_id) + " is in flight");
    end_request(q.req_id, true);
  }
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
  tenant_->metrics.requests_total.fetch_add(1, std::memory_order_relaxed);

  const auto now = Clock::now();
  RequestTable::Entry& inf = inflight_.add(q.req_id, now, timeout);
  inflight_count_.store(inflight_.size(), std::memory_order_relaxed);
  const uint32_t req_id = q.req_id;
  std::weak_ptr<Session> weak = weak_from_this();
  // The token is filled in below; it is read only on this executor, after this function returns.
  auto token_holder = std::make_shared<uint64_t>(0);
  inf.token = server_.bus().request(
      msg, [weak, req_id, token_holder, claim = inf.claim, started = now, ex = ex_](Code st, const BusMessagePtr& m) {
        auto self = weak.lock();
        if (!self) return;
        // A reply is written from the thread it arrived on; the bookkeeping follows on the executor.
        if (st == Code::ok && m && self->answer_now(req_id, *claim, started, *m)) {
          asio::post(ex, [weak, req_id, token_holder] {
            if (auto s = weak.lock()) s->finish_answered(req_id, *token_holder);
          });
          return;
        }
        asio::post(ex, [weak, req_id, token_holder, st, m] {
          if (auto s = weak.lock()) s->on_bus_reply(req_id, *token_holder, st, m);
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
    if (!inf.claim_here()) {  // a reply was written just now
      inflight_count_.store(inflight_.size(), std::memory_order_relaxed);
      continue;
    }
    send_res(req_id, Code::request_timeout, "no reply within " + std::to_string(inf.timeout_ms) + " ms");
    request_done();
  }
  if (next != Clock::time_point::max()) arm_request_timer(next);
  flush();
}

// A reply from the bus, on the thread it arrived on: written at once (true), or left to
// on_bus_reply on the executor (false: too large for the client, which gets an error RES instead).
// Also true when the request was answered already (timed out): the reply is dropped. The tenant's
// in-flight slot is given back before the RES goes out, so that a client that sends its next
// request on seeing the RES finds the slot free.
bool Session::answer_now(uint32_t req_id, std::atomic<int>& claim, Clock::time_point started, const BusMessage& m) {
  thread_local std::string frame;
  frame.clear();
  proto::encode_res_framed(frame, req_id, 0, m.payload, m.headers);
  if (frame.size() > max_frame_ + 4) return false;
  int expected = RequestTable::Entry::kPending;
  if (!claim.compare_exchange_strong(expected, RequestTable::Entry::kReplied)) return true;
  tenant_->release_request();
  {
    std::lock_guard lk(out_mu_);
    if (state_.load() == State::closed || closing_) return true;
    if (admit_locked(frame.size())) {
      out_.buf() += frame;
      msgs_out_.fetch_add(1, std::memory_order_relaxed);
      bytes_out_.fetch_add(frame.size(), std::memory_order_relaxed);
      if (!write_through_locked()) schedule_flush_locked();
    }
  }
  tenant_->metrics.observe_latency_us(server_.metrics().latency_bounds_us, static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - started).count()));
  return true;
}

void Session::finish_answered(uint32_t req_id, uint64_t token) {
  if (const auto* inf = inflight_.find(req_id, token); inf && inf->replied()) end_request(req_id, true);
}

void Session::end_request(uint32_t req_id, bool replied) {
  if (!inflight_.erase(req_id)) return;
  if (!replied) return request_done();
  inflight_count_.store(inflight_.size(), std::memory_order_relaxed);
}

void Session::on_bus_reply(uint32_t req_id, uint64_t token, Code status, const BusMessagePtr& m) {
  const auto* inf = inflight_.find(req_id, token);
  if (!inf) return;  // timed out or cancelled
  if (!inf->claim_here()) return end_request(req_id, true);
  const auto started = inf->started;
  if (status == Code::ok && m) {
    // answer_now() wrote every reply that fits this client's max_frame: this one does not.
    std::string frame;
    proto::encode_res_framed(frame, req_id, 0, m->payload, m->headers);
    send_res(req_id, Code::payload_too_large,
             "the reply of " + std::to_string(frame.size() - 4) + " bytes is above max_frame");
  } else {
    send_res(req_id, status,
             status == Code::no_responders     ? "no responders are subscribed to the request subject"
             : status == Code::request_timeout ? "the bus answered that the request timed out"
             : status == Code::internal_error  ? "the bus answered with a status instead of a reply"
                                               : "the bus is unavailable");
  }
  tenant_->metrics.observe_latency_us(server_.metrics().latency_bounds_us, static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - started).count()));
  end_request(req_id, false);  // the request timer is not moved: it skips requests that are gone
  flush();
}

void Session::request_done() {
  inflight_count_.store(inflight_.size(), std::memory_order_relaxed);
  tenant_->release_request();
}

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

}  // namespace busgate::gw
