#include "nats_jetstream.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <set>

#include "nats_bus.hpp"
#include "nats_js_internal.hpp"
#include "nats_js_sub.hpp"
#include "nats_link.hpp"

namespace busgate::gw {

using namespace js;
using proto::Code;

// ------------------------------------------------------------------------------------------------
// Timers and shutdown

void NatsJetStream::Impl::start_ticker() {
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

void NatsJetStream::Impl::stop() {
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

// ------------------------------------------------------------------------------------------------
// Dispatch: what the link hands over, which subscription holds which delivery, releases

void NatsJetStream::Impl::release_after_purge(const ConsumerSpec& spec, std::vector<std::string> acks) {
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

void NatsJetStream::Impl::release_now(const std::shared_ptr<Release>& rel) {
  if (rel->sent.exchange(true)) return;
  {
    std::lock_guard lk(rel_mu);
    releases.erase(rel);
  }
  for (const auto& a : rel->acks) nak_raw(a);
}

std::shared_ptr<JsSub> NatsJetStream::Impl::hand_over(const std::string& key, uint64_t sseq,
                                                      const std::shared_ptr<JsSub>& by, bool keep) {
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

void NatsJetStream::Impl::let_go(const std::string& key, uint64_t sseq, const JsSub* by) {
  std::lock_guard lk(hold_mu);
  auto k = holders.find(key);
  if (k == holders.end()) return;
  auto it = k->second.find(sseq);
  if (it == k->second.end() || it->second.raw != by) return;
  k->second.erase(it);
  if (k->second.empty()) holders.erase(k);
}

void NatsJetStream::Impl::route(uint64_t sid, const std::shared_ptr<JsSub>& sub) {
  std::lock_guard lk(subs_mu);
  routes[sid] = Route{sub, false, {}};
}

void NatsJetStream::Impl::retire(uint64_t sid) {
  if (!sid) return;
  std::lock_guard lk(subs_mu);
  auto it = routes.find(sid);
  if (it == routes.end()) return;
  it->second.retired = true;
  it->second.until = Clock::now() + kRetireFor;
}

void NatsJetStream::Impl::count(const ConsumerSpec& spec, bool dead) {
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
