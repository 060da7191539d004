#include "memory_durable.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <set>

#include "busgate/protocol/subject.hpp"
#include "log_text.hpp"

namespace busgate::gw {

using Clock = MemoryDurable::Clock;
using std::chrono::milliseconds;

// One durable subscription. Its state is guarded by the engine's mutex. Once the engine is gone
// (the bus was destroyed first) every call does nothing and answers "not outstanding".
class MemoryDurable::Sub final : public DurableSubscription {
 public:
  Sub(MemoryDurable& e, Consumer* c, DurableWindow w, std::shared_ptr<DurableSink> sink)
      : e_(e), guard_(e.guard_), c_(c), w_(w), sink_(std::move(sink)) {}
  ~Sub() override { close(); }

  void start() override {
    Outbox out;
    {
      std::lock_guard lk(guard_->mu);
      if (guard_->gone) return;
      started_ = true;
      e_.pump_locked(*c_, Clock::now(), out);
    }
    e_.flush(out);
  }
  void add_credit(uint64_t n) override {
    Outbox out;
    {
      std::lock_guard lk(guard_->mu);
      if (guard_->gone) return;
      credits_ = credits_ + n < credits_ ? UINT64_MAX : credits_ + n;
      refusing_ = false;
      e_.pump_locked(*c_, Clock::now(), out);
    }
    e_.flush(out);
  }
  bool ack(uint64_t id) override {
    return settle(id, [this](Consumer& c, uint64_t seq, Pending&) {
      c.pending.erase(seq);
      if (c.stream->spec.workqueue) e_.remove_locked(*c.stream, seq);
    });
  }
  bool nak(uint64_t id, uint64_t delay_ms) override {
    return settle(id, [this, delay_ms](Consumer& c, uint64_t seq, Pending& p) {
      const uint64_t d = delay_ms ? delay_ms : c.spec.backoff_for(p.attempt);
      p.deadline = Clock::now() + milliseconds(d);
      if (d == 0) c.ready.insert(seq);
      else e_.wake_at_locked(p.deadline);
    });
  }
  bool progress(uint64_t id) override {
    std::lock_guard lk(guard_->mu);
    if (guard_->gone) return false;
    refusing_ = false;
    const auto it = out_.find(id);
    if (it == out_.end()) return false;
    const auto p = c_->pending.find(it->second);
    if (p != c_->pending.end()) p->second.deadline = Clock::now() + milliseconds(c_->spec.ack_wait_ms);
    return true;
  }
  bool term(uint64_t id, const std::string& reason) override {
    Outbox out;
    const bool found = settle(id, [this, &reason, &out](Consumer& c, uint64_t seq, Pending& p) {
      const uint32_t attempts = p.attempt;
      c.pending.erase(seq);
      if (const Stored* m = e_.find_locked(*c.stream, seq))
        e_.dead_letter_locked(c, seq, *m, reason.empty() ? "terminated" : "terminated: " + reason, attempts, out);
    });
    e_.flush(out);
    return found;
  }
  void close() override {
    Outbox out;
    {
      std::lock_guard lk(guard_->mu);
      if (closed_ || guard_->gone) return;
      closed_ = true;
      auto& subs = c_->subs;
      subs.erase(std::remove(subs.begin(), subs.end(), this), subs.end());
      e_.release_locked(*this, Clock::now());
      e_.pump_locked(*c_, Clock::now(), out);
    }
    e_.flush(out);
  }
  uint32_t outstanding() const override {
    std::lock_guard lk(guard_->mu);
    if (guard_->gone) return 0;
    return static_cast<uint32_t>(out_.size());
  }

  bool has_room() const {
    return started_ && !closed_ && !refusing_ && out_.size() < w_.limit && (!w_.credit_mode || credits_ > 0);
  }

 private:
  friend class MemoryDurable;
  // Takes delivery `id` off this subscription and applies fn to its pending entry (the engine's
  // mutex held); false when it is not outstanding here.
  template <typename Fn>
  bool settle(uint64_t id, Fn fn) {
    Outbox out;
    {
      std::lock_guard lk(guard_->mu);
      if (guard_->gone) return false;
      refusing_ = false;
      const auto it = out_.find(id);
      if (it == out_.end()) return false;
      const uint64_t seq = it->second;
      out_.erase(it);
      const auto p = c_->pending.find(seq);
      if (p != c_->pending.end() && p->second.sub == this) {
        p->second.sub = nullptr;
        --c_->outstanding;
        fn(*c_, seq, p->second);
      }
      e_.pump_locked(*c_, Clock::now(), out);
    }
    e_.flush(out);
    return true;
  }

  MemoryDurable& e_;  // valid while guard_->gone is false
  const std::shared_ptr<Guard> guard_;
  Consumer* c_;
  DurableWindow w_;
  std::shared_ptr<DurableSink> sink_;
  uint64_t credits_ = 0;
  uint64_t next_id_ = 0;
  std::unordered_map<uint64_t, uint64_t> out_;  // delivery id → stream sequence
  bool started_ = false;
  bool closed_ = false;
  bool refusing_ = false;  // the session could not take the last delivery; skipped until it acts
};

MemoryDurable::MemoryDurable(PublishFn publish, PublishFn deliver_plain)
    : publish_(std::move(publish)), deliver_plain_(std::move(deliver_plain)) {
  timer_ = std::thread([this] { timer_loop(); });
}

MemoryDurable::~MemoryDurable() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  timer_.join();
  std::lock_guard lk(mu_);
  guard_->gone = true;
}

void MemoryDurable::wake_at_locked(Clock::time_point t) {
  if (t < timer_next_) {
    timer_next_ = t;
    cv_.notify_one();
  }
}

void MemoryDurable::configure_durable(std::vector<StreamSpec> streams, std::vector<ConsumerSpec> consumers) {
  Outbox out;
  {
    std::lock_guard lk(mu_);
    for (auto& s : streams) {
      auto& slot = streams_[s.bus_name];
      if (!slot) slot = std::make_unique<Stream>();
      slot->spec = std::move(s);
    }
    for (auto& c : consumers) {
      auto st = streams_.find(c.stream_bus);
      if (st == streams_.end()) continue;
      auto& slot = consumers_[{c.stream_bus, c.name}];
      if (!slot) {
        slot = std::make_unique<Consumer>();
        slot->stream = st->second.get();
        slot->cursor = c.deliver_all ? st->second->first_seq : st->second->next_seq;
        st->second->consumers.push_back(slot.get());
      }
      slot->spec = std::move(c);
      pump_locked(*slot, Clock::now(), out);
    }
    any_streams_ = !streams_.empty();
  }
  flush(out);
}

MemoryDurable::Stream* MemoryDurable::stream_for_locked(std::string_view subject) {
  for (auto& [name, s] : streams_)
    for (const auto& p : s->spec.subjects)
      if (proto::subject_matches(p, subject)) return s.get();
  return nullptr;
}

MemoryDurable::Stored* MemoryDurable::find_locked(Stream& s, uint64_t seq) {
  if (seq < s.first_seq || seq >= s.first_seq + s.msgs.size()) return nullptr;
  Stored& m = s.msgs[seq - s.first_seq];
  return m.deleted ? nullptr : &m;
}

void MemoryDurable::remove_locked(Stream& s, uint64_t seq) {
  Stored* m = find_locked(s, seq);
  if (!m) return;
  m->deleted = true;
  --s.live;
  s.bytes -= stored_bytes(*m->msg);
  m->msg.reset();
  while (!s.msgs.empty() && s.msgs.front().deleted) {
    s.msgs.pop_front();
    ++s.first_seq;
  }
}

proto::Code MemoryDurable::store_locked(const BusMessagePtr& msg, std::string_view msg_id, Stream& s,
                                        Clock::time_point now, std::string& why, bool& duplicate) {
  duplicate = false;
  while (!s.dedupe_order.empty() && s.dedupe_order.front().first <= now) {
    const auto it = s.dedupe.find(s.dedupe_order.front().second);
    if (it != s.dedupe.end() && it->second <= now) s.dedupe.erase(it);
    s.dedupe_order.pop_front();
  }
  if (!msg_id.empty() && s.dedupe.count(std::string(msg_id))) {
    duplicate = true;
    return proto::Code::ok;
  }
  const uint64_t size = stored_bytes(*msg);
  const auto over = [&] {
    return (s.spec.max_msgs >= 0 && s.live + 1 > static_cast<uint64_t>(s.spec.max_msgs)) ||
           (s.spec.max_bytes >= 0 && s.bytes + size > static_cast<uint64_t>(s.spec.max_bytes));
  };
  if (over()) {
    if (s.spec.workqueue) {
      why = "stream '" + s.spec.name + "' is full";
      return proto::Code::not_stored;
    }
    while (over() && s.live > 0) remove_locked(s, s.first_seq);  // limits: the oldest go
    if (over()) {
      why = "the message is larger than stream '" + s.spec.name + "' may hold";
      return proto::Code::not_stored;
    }
  }
  if (s.msgs.empty()) s.first_seq = s.next_seq;
  s.msgs.push_back(Stored{s.next_seq++, msg, now, false});
  ++s.live;
  s.bytes += size;
  if (!msg_id.empty() && s.spec.duplicate_window_ms > 0) {
    const auto until = now + milliseconds(s.spec.duplicate_window_ms);
    s.dedupe[std::string(msg_id)] = until;
    s.dedupe_order.emplace_back(until, std::string(msg_id));
  }
  if (s.spec.max_age_ms) wake_at_locked(now + milliseconds(s.spec.max_age_ms));
  return proto::Code::ok;
}

void MemoryDurable::on_publish(const BusMessagePtr& msg) {
  if (!any_streams_.load(std::memory_order_relaxed)) return;
  Outbox out;
  {
    std::lock_guard lk(mu_);
    Stream* s = stream_for_locked(msg->subject);
    if (!s) return;
    std::string why;
    bool dup = false;
    const auto now = Clock::now();
    if (store_locked(msg, {}, *s, now, why, dup) != proto::Code::ok) {
      spdlog::warn("memory bus: a message on {} was not stored: {}", log_text(msg->subject), why);
      return;
    }
    for (Consumer* c : s->consumers) pump_locked(*c, now, out);
  }
  flush(out);
}

void MemoryDurable::publish_stored(BusMessagePtr msg, std::string msg_id, StoredFn done) {
  Outbox out;
  proto::Code code;
  std::string why;
  bool dup = false;
  {
    std::lock_guard lk(mu_);
    Stream* s = stream_for_locked(msg->subject);
    if (!s) {
      code = proto::Code::not_stored;
      why = "no stream stores this subject";
    } else {
      const auto now = Clock::now();
      code = store_locked(msg, msg_id, *s, now, why, dup);
      if (code == proto::Code::ok && !dup)
        for (Consumer* c : s->consumers) pump_locked(*c, now, out);
    }
  }
  flush(out);
  if (code == proto::Code::ok && !dup) {
    // As on JetStream, whose store confirmation travels on the reply subject, the plain subscribers
    // of a stored publish see no reply subject.
    if (msg->reply_to.empty()) deliver_plain_(msg);
    else deliver_plain_(std::make_shared<const BusMessage>(msg->subject, std::string_view{}, msg->headers, msg->payload));
  }
  done(code, std::move(why));
}

void MemoryDurable::subscribe_durable(ConsumerSpec spec, DurableWindow window, uint32_t max_client_consumers,
                                      std::shared_ptr<DurableSink> sink, DurableReadyFn ready) {
  proto::Code code = proto::Code::ok;
  std::string why;
  std::shared_ptr<Sub> sub;
  {
    std::lock_guard lk(mu_);
    const auto st = streams_.find(spec.stream_bus);
    Consumer* c = nullptr;
    if (st == streams_.end()) {
      code = proto::Code::unknown_stream;
      why = "no stream '" + spec.stream + "'";
    } else if (auto it = consumers_.find({spec.stream_bus, spec.name}); it != consumers_.end()) {
      c = it->second.get();
      if (c->spec.filter != spec.filter) {
        code = proto::Code::invalid_option;
        why = "consumer '" + spec.name + "' takes '" + c->spec.filter_client + "', not '" + spec.filter_client + "'";
        c = nullptr;
      } else if (spec.declared) {
        c->spec = std::move(spec);
      }
    } else {
      Stream& s = *st->second;
      uint32_t created = 0;
      for (const auto& [key, other] : consumers_)
        if (!other->spec.declared && other->spec.tenant == spec.tenant) ++created;
      if (!spec.declared && created >= max_client_consumers) {
        code = proto::Code::too_many_consumers;
        why = "the tenant has " + std::to_string(created) + " client-created consumers, its limit";
      }
      if (code == proto::Code::ok && s.spec.workqueue)
        for (const Consumer* o : s.consumers)
          if (proto::subject_matches(o->spec.filter, spec.filter) || proto::subject_matches(spec.filter, o->spec.filter) ||
              o->spec.filter == spec.filter) {
            code = proto::Code::invalid_option;
            why = "'" + spec.filter_client + "' overlaps consumer '" + o->spec.name + "' on workqueue stream '" +
                  s.spec.name + "'";
            break;
          }
      if (code == proto::Code::ok) {
        auto fresh = std::make_unique<Consumer>();
        fresh->stream = &s;
        fresh->cursor = spec.deliver_all ? s.first_seq : s.next_seq;
        fresh->spec = std::move(spec);
        c = fresh.get();
        s.consumers.push_back(c);
        consumers_[{c->spec.stream_bus, c->spec.name}] = std::move(fresh);
      }
    }
    if (c) {
      window.limit = std::max<uint32_t>(1, window.limit);
      sub = std::make_shared<Sub>(*this, c, window, std::move(sink));
      c->subs.push_back(sub.get());
    }
  }
  ready(code, std::move(why), sub);
}

MemoryDurable::Sub* MemoryDurable::pick_sub_locked(Consumer& c) {
  const size_t n = c.subs.size();
  for (size_t i = 0; i < n; ++i) {
    Sub* s = c.subs[(c.rr + i) % n];
    if (s->has_room()) {
      c.rr = (c.rr + i + 1) % n;
      return s;
    }
  }
  return nullptr;
}

void MemoryDurable::pump_locked(Consumer& c, Clock::time_point now, Outbox& out) {
  Stream& st = *c.stream;
  while (c.outstanding < c.spec.max_inflight) {
    Sub* s = pick_sub_locked(c);
    if (!s) return;
    uint64_t seq = 0;
    uint32_t attempt = 1;
    Stored* m = nullptr;
    if (!c.ready.empty()) {
      seq = *c.ready.begin();
      c.ready.erase(c.ready.begin());
      const auto p = c.pending.find(seq);
      if (p == c.pending.end() || p->second.sub) continue;
      m = find_locked(st, seq);
      if (!m) {  // removed by the stream's limits meanwhile
        c.pending.erase(p);
        continue;
      }
      if (p->second.attempt >= c.spec.max_deliveries) {
        const uint32_t attempts = p->second.attempt;
        c.pending.erase(p);
        dead_letter_locked(c, seq, *m, "max_deliveries", attempts, out);
        continue;
      }
      attempt = p->second.attempt + 1;
    } else {
      if (c.cursor < st.first_seq) c.cursor = st.first_seq;
      const uint64_t end = st.first_seq + st.msgs.size();
      while (c.cursor < end) {
        Stored* cand = find_locked(st, c.cursor);
        if (cand && !c.pending.count(c.cursor) && proto::subject_matches(c.spec.filter, cand->msg->subject)) {
          m = cand;
          break;
        }
        ++c.cursor;
      }
      if (!m) return;
      seq = c.cursor++;
    }
    Pending& p = c.pending[seq];
    p.attempt = attempt;
    p.sub = s;
    p.delivery_id = ++s->next_id_;
    p.deadline = now + milliseconds(c.spec.ack_wait_ms);
    s->out_[p.delivery_id] = seq;
    ++c.outstanding;
    if (s->w_.credit_mode) --s->credits_;
    if (attempt > 1) ++c.redelivered;
    wake_at_locked(p.deadline);
    if (!s->sink_->on_durable(m->msg, p.delivery_id, attempt)) {
      // The session could not take it: released at once, and this subscription is skipped until it
      // acts again.
      s->out_.erase(p.delivery_id);
      if (s->w_.credit_mode) ++s->credits_;
      p.sub = nullptr;
      --c.outstanding;
      s->refusing_ = true;
      c.ready.insert(seq);
    }
  }
}

void MemoryDurable::dead_letter_locked(Consumer& c, uint64_t seq, const Stored& m, std::string reason,
                                       uint32_t attempts, Outbox& out) {
  out.push_back(make_dead_letter(*m.msg, c.spec, c.spec.client_subject(m.msg->subject), reason, attempts));
  ++c.dead_lettered;
  spdlog::info("tenant {} consumer {}: message {} dead-lettered to {} ({}, {} attempts)", c.spec.tenant, c.spec.name,
               seq, c.spec.dead_letter_client, reason, attempts);
  if (c.stream->spec.workqueue) remove_locked(*c.stream, seq);
}

void MemoryDurable::release_locked(Sub& sub, Clock::time_point now) {
  Consumer& c = *sub.c_;
  for (const auto& [id, seq] : sub.out_) {
    const auto p = c.pending.find(seq);
    if (p == c.pending.end() || p->second.sub != &sub) continue;
    p->second.sub = nullptr;
    p->second.deadline = now;
    --c.outstanding;
    c.ready.insert(seq);
  }
  sub.out_.clear();
}

void MemoryDurable::flush(Outbox& out) {
  for (auto& m : out) publish_(std::move(m));
  out.clear();
}

void MemoryDurable::timer_loop() {
  std::unique_lock lk(mu_);
  while (!stop_) {
    const auto now = Clock::now();
    auto next = now + std::chrono::hours(1);
    Outbox out;
    for (auto& [name, s] : streams_) {
      if (s->spec.max_age_ms == 0) continue;
      const auto age = milliseconds(s->spec.max_age_ms);
      while (!s->msgs.empty() && (s->msgs.front().deleted || s->msgs.front().at + age <= now)) {
        if (s->msgs.front().deleted) {
          s->msgs.pop_front();
          ++s->first_seq;
        } else {
          remove_locked(*s, s->first_seq);
        }
      }
      if (!s->msgs.empty()) next = std::min(next, s->msgs.front().at + age);
    }
    for (auto& [key, c] : consumers_) {
      for (auto& [seq, p] : c->pending) {
        if (p.deadline > now) continue;
        if (p.sub) {  // the ack wait passed: redeliver now
          p.sub->out_.erase(p.delivery_id);
          p.sub = nullptr;
          --c->outstanding;
          c->ready.insert(seq);
        } else {
          c->ready.insert(seq);
        }
      }
      for (Sub* s : c->subs) s->refusing_ = false;
      pump_locked(*c, now, out);
      for (const auto& [seq, p] : c->pending)
        if (p.deadline > now) next = std::min(next, p.deadline);
    }
    if (!out.empty()) {
      lk.unlock();
      flush(out);
      lk.lock();
      continue;
    }
    timer_next_ = next;
    cv_.wait_until(lk, next, [&] { return stop_ || timer_next_ < next; });
  }
}

std::vector<ConsumerStats> MemoryDurable::consumer_stats() {
  std::lock_guard lk(mu_);
  std::vector<ConsumerStats> out;
  for (const auto& [key, c] : consumers_) {
    ConsumerStats cs;
    cs.tenant = c->spec.tenant;
    cs.stream = c->spec.stream;
    cs.consumer = c->spec.name;
    const Stream& st = *c->stream;
    for (uint64_t seq = std::max(c->cursor, st.first_seq); seq < st.first_seq + st.msgs.size(); ++seq) {
      const Stored& m = st.msgs[seq - st.first_seq];
      if (!m.deleted && !c->pending.count(seq) && proto::subject_matches(c->spec.filter, m.msg->subject)) ++cs.pending;
    }
    cs.pending += c->pending.size() - c->outstanding;
    cs.ack_pending = c->outstanding;
    cs.redelivered = c->redelivered;
    cs.dead_lettered = c->dead_lettered;
    cs.max_inflight = c->spec.max_inflight;
    cs.subscribers = static_cast<uint32_t>(c->subs.size());
    out.push_back(std::move(cs));
  }
  return out;
}

}  // namespace busgate::gw
