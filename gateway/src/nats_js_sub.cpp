#include "nats_js_sub.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>

#include "log_text.hpp"
#include "nats_bus.hpp"

namespace busgate::gw {

using namespace js;
using proto::Code;

namespace {

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


}  // namespace

JsSub::JsSub(std::weak_ptr<NatsJetStream::Impl> js, ConsumerSpec s, DurableWindow w, std::shared_ptr<DurableSink> sink,
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

void JsSub::attach() {
  auto js = js_.lock();
  if (!js) return;
  std::lock_guard lk(mu_);
  relink_locked(*js);
}

void JsSub::start() {
  {
    std::lock_guard lk(mu_);
    started_ = true;
  }
  pull();
}

void JsSub::add_credit(uint64_t n) {
  {
    std::lock_guard lk(mu_);
    credits_ = credits_ > UINT64_MAX - n ? UINT64_MAX : credits_ + n;
  }
  pull();
}

bool JsSub::ack(uint64_t id) {
  std::string ack;
  if (!take(id, ack, nullptr, nullptr)) return false;
  send(ack, "+ACK");
  pull();
  return true;
}

bool JsSub::nak(uint64_t id, uint64_t delay_ms) {
  std::string ack;
  uint32_t attempt = 0;
  if (!take(id, ack, &attempt, nullptr)) return false;
  const uint64_t d = delay_ms ? delay_ms : spec.backoff_for(attempt);
  send(ack, nak_body(std::chrono::milliseconds(d)));
  pull();
  return true;
}

bool JsSub::progress(uint64_t id) {
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

bool JsSub::term(uint64_t id, const std::string& reason) {
  std::string ack;
  uint32_t attempt = 0;
  BusMessagePtr msg;
  if (!take(id, ack, &attempt, &msg)) return false;
  if (auto js = js_.lock())
    js->dead_letter(shared_from_this(), msg, ack, reason.empty() ? "terminated" : "terminated: " + reason, attempt);
  pull();
  return true;
}

void JsSub::close() {
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

uint32_t JsSub::outstanding() const {
  std::lock_guard lk(mu_);
  return static_cast<uint32_t>(out_.size());
}

void JsSub::on_msg(const NatsInbound& m, bool current) {
  auto js = js_.lock();
  if (!js) return;
  uint32_t attempt = 0;
  uint64_t sseq = 0;
  if (!parse_ack(m.reply, attempt, sseq)) {
    spdlog::warn("jetstream: a delivery for consumer {} with an unexpected reply subject '{}'", spec.name,
                 log_text(m.reply, 128));
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

void JsSub::forget(uint64_t sseq) {
  {
    std::lock_guard lk(mu_);
    auto it = by_seq_.find(sseq);
    if (it == by_seq_.end()) return;
    out_.erase(it->second);
    by_seq_.erase(it);
  }
  pull();
}

void JsSub::on_status(const NatsInbound& m) {
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

void JsSub::recover(bool check, bool wait) {
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

void JsSub::tick(Clock::time_point now, bool link_up) {
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

bool JsSub::erase_locked(uint64_t id) {
  auto it = out_.find(id);
  if (it == out_.end()) return false;
  by_seq_.erase(it->second.sseq);
  out_.erase(it);
  return true;
}

void JsSub::let_go(uint64_t sseq) {
  if (auto js = js_.lock()) js->let_go(key_, sseq, this);
}

std::string JsSub::nak_body(std::chrono::milliseconds delay) {
  if (delay.count() == 0) return "-NAK";
  return "-NAK {\"delay\": " + std::to_string(to_ns(delay)) + "}";
}

bool JsSub::take(uint64_t id, std::string& ack, uint32_t* attempt, BusMessagePtr* msg) {
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

void JsSub::send(const std::string& ack, std::string_view body) {
  if (auto js = js_.lock()) js->link.publish(ack, {}, {}, body, false);
}

void JsSub::relink_locked(NatsJetStream::Impl& js) {
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

void JsSub::pull() {
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

}  // namespace busgate::gw
