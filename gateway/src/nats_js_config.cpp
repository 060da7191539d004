// Applying the durable configuration on JetStream: every configured stream and consumer created or
// updated, retried with a back-off while JetStream does not answer or refuses, and consumers
// checked (and re-created) when a subscription finds them missing.
#include <spdlog/spdlog.h>

#include <set>

#include "nats_js_sub.hpp"

namespace busgate::gw {

using namespace js;

void NatsJetStream::Impl::ensure_consumer(const ConsumerSpec& spec, EnsureFn fn) {
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

void NatsJetStream::Impl::note(const std::shared_ptr<Round>& rd, const std::string& item, const ApiReply& r) {
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

void NatsJetStream::Impl::done(const std::shared_ptr<Round>& rd) {
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

void NatsJetStream::Impl::apply() {
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

void NatsJetStream::Impl::apply_consumer(const std::shared_ptr<Round>& rd, const ConsumerSpec& c) {
  rd->left.fetch_add(1);
  auto self = shared_from_this();
  create_consumer(c, [self, rd, item = "consumer " + c.name + " of stream " + c.stream_bus](ApiReply& r) {
    self->note(rd, item, r);
    self->done(rd);
  });
}

void NatsJetStream::Impl::configure(std::vector<StreamSpec> ss, std::vector<ConsumerSpec> cs) {
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

void NatsJetStream::Impl::reapply_soon() {
  std::lock_guard lk(cfg_mu);
  const auto now = Clock::now();
  if (!configured || now - last_reapply < kReapplyEvery) return;
  last_reapply = now;
  if (!retry_at || *retry_at > now) retry_at = now;
}

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

}  // namespace busgate::gw
