// Opening a durable subscription on JetStream: the consumer looked up, or created (a declared one,
// or one a client asks for, within the tenant's max_consumers), its stream re-created when it was
// lost, and the subscription attached to its first inbox.
#include <spdlog/spdlog.h>

#include <set>

#include "nats_js_sub.hpp"

namespace busgate::gw {

using namespace js;
using proto::Code;

void NatsJetStream::Impl::subscribe(std::shared_ptr<Opening> o) {
  if (!link.connected()) return o->ready(Code::bus_unavailable, "the NATS connection is down", nullptr);
  auto self = shared_from_this();
  consumer_info(o->spec.stream_bus, o->spec.name, [self, o](ApiReply& r) {
    const ConsumerSpec& spec = o->spec;
    if (r.ok()) {
      if (!spec.declared && !spec.filter.empty()) {
        std::string existing;
        if (auto c = r.body.find("config"); c != r.body.end() && c->is_object())
          existing = c->value("filter_subject", std::string());
        if (!existing.empty() && existing != spec.filter)
          return o->ready(Code::invalid_option,
                          "consumer '" + spec.name + "' exists and takes '" +
                              std::string(spec.client_subject(existing)) + "'",
                          nullptr);
      }
      return self->open(o, r.body);
    }
    if (!r.answered())
      return o->ready(Code::bus_unavailable, "consumer '" + spec.name + "': " + r.describe(), nullptr);
    if (r.err_code == kConsumerNotFound) return self->create_for(o);
    if (r.err_code == kStreamNotFound) {
      const auto s = self->stream_spec_of(spec.stream_bus);
      if (!s) return o->ready(Code::unknown_stream, "stream '" + spec.stream + "' does not exist on the bus", nullptr);
      return self->create_stream(*s, [self, o](ApiReply& r2) {
        if (!r2.ok())
          return o->ready(r2.answered() ? Code::unknown_stream : Code::bus_unavailable,
                          "stream '" + o->spec.stream + "': " + r2.describe(), nullptr);
        self->create_for(o);
      });
    }
    o->ready(Code::bus_unavailable, "consumer '" + spec.name + "': " + r.describe(), nullptr);
  });
}

void NatsJetStream::Impl::create_for(const std::shared_ptr<Opening>& o) {
  auto self = shared_from_this();
  auto create = [self, o] {
    self->create_consumer(o->spec, [self, o](ApiReply& r) {
      if (r.ok()) {
        spdlog::info("jetstream: consumer {} of stream {} created{}", o->spec.name, o->spec.stream_bus,
                     o->spec.declared ? "" : " by a client");
        return self->open(o, r.body);
      }
      if (!r.answered())
        return o->ready(Code::bus_unavailable, "consumer '" + o->spec.name + "': " + r.describe(), nullptr);
      if (r.err_code == kStreamNotFound)
        return o->ready(Code::unknown_stream, "stream '" + o->spec.stream + "' does not exist on the bus", nullptr);
      o->ready(Code::invalid_option, "consumer '" + o->spec.name + "': " + r.describe(), nullptr);
    });
  };
  if (o->spec.declared) return create();
  if (o->max_client_consumers == 0)
    return o->ready(Code::too_many_consumers, "the tenant may not create consumers (max_consumers is 0)", nullptr);
  count_client_consumers(o->spec.tenant, o->spec.stream_bus,
                         [o, create](bool ok, uint64_t n, const std::string& why) {
                           if (!ok) return o->ready(Code::bus_unavailable, why, nullptr);
                           if (n >= o->max_client_consumers)
                             return o->ready(Code::too_many_consumers,
                                             "the tenant has " + std::to_string(n) +
                                                 " consumers created by clients (max_consumers " +
                                                 std::to_string(o->max_client_consumers) + ")",
                                             nullptr);
                           create();
                         });
}

void NatsJetStream::Impl::count_client_consumers(const std::string& tenant, const std::string& also_stream,
                                                 std::function<void(bool, uint64_t, std::string)> done) {
  std::set<std::string> names;     // the tenant's streams
  std::set<std::string> declared;  // stat_key of declared consumers
  {
    std::lock_guard lk(cfg_mu);
    for (const auto& s : streams)
      if (s.tenant == tenant) names.insert(s.bus_name);
    for (const auto& c : consumers)
      if (c.tenant == tenant) declared.insert(stat_key(c.stream_bus, c.name));
  }
  names.insert(also_stream);
  struct Count {
    std::mutex mu;
    size_t left = 0;
    uint64_t n = 0;
    bool ok = true;
    std::string why;
    std::function<void(bool, uint64_t, std::string)> done;
  };
  auto st = std::make_shared<Count>();
  st->left = names.size();
  st->done = std::move(done);
  auto self = shared_from_this();
  auto finish_one = [st](bool ok, uint64_t n, const std::string& why) {
    bool last = false;
    {
      std::lock_guard lk(st->mu);
      st->n += n;
      if (!ok && st->ok) {
        st->ok = false;
        st->why = why;
      }
      last = --st->left == 0;
    }
    if (last) st->done(st->ok, st->n, st->why);
  };
  for (const auto& stream : names) {
    // Pages of CONSUMER.NAMES, counting names that are not declared.
    auto page = std::make_shared<std::function<void(uint64_t, uint64_t)>>();
    *page = [self, stream, declared, finish_one, page](uint64_t offset, uint64_t counted) {
      self->api("$JS.API.CONSUMER.NAMES." + stream, json{{"offset", offset}},
                [self, stream, declared, finish_one, page, offset, counted](ApiReply& r) mutable {
                  if (r.err_code == kStreamNotFound) {
                    *page = nullptr;  // the last page: drops the function's reference to itself
                    finish_one(true, counted, {});
                  } else if (!r.ok()) {
                    *page = nullptr;
                    finish_one(false, 0, "cannot count the tenant's consumers: " + r.describe());
                  } else {
                    uint64_t seen = 0;
                    if (auto c = r.body.find("consumers"); c != r.body.end() && c->is_array())
                      for (const auto& n : *c) {
                        ++seen;
                        if (n.is_string() && !declared.count(stat_key(stream, n.get<std::string>()))) ++counted;
                      }
                    const uint64_t total = r.body.value("total", uint64_t{0});
                    if (seen > 0 && offset + seen < total) {
                      (*page)(offset + seen, counted);
                    } else {
                      *page = nullptr;
                      finish_one(true, counted, {});
                    }
                  }
                  return true;
                });
    };
    (*page)(0, 0);
  }
}

void NatsJetStream::Impl::open(const std::shared_ptr<Opening>& o, const json& info) {
  uint64_t ack_wait_ms = o->spec.ack_wait_ms;
  uint64_t max_ack_pending = o->spec.max_inflight;
  if (auto c = info.find("config"); c != info.end() && c->is_object()) {
    if (const int64_t w = c->value("ack_wait", int64_t{0}); w > 0) ack_wait_ms = static_cast<uint64_t>(w / 1000000);
    if (const int64_t m = c->value("max_ack_pending", int64_t{0}); m > 0) max_ack_pending = static_cast<uint64_t>(m);
  }
  auto sub = std::make_shared<JsSub>(weak_from_this(), o->spec, o->window, o->sink, ack_wait_ms, max_ack_pending);
  {
    std::lock_guard lk(stats_mu);
    auto& e = stats[stat_key(o->spec.stream_bus, o->spec.name)];
    e.tenant = o->spec.tenant;
    e.stream = o->spec.stream;
    e.consumer = o->spec.name;
    e.stream_bus = o->spec.stream_bus;
    e.max_inflight = static_cast<uint32_t>(std::min<uint64_t>(max_ack_pending, UINT32_MAX));
  }
  {
    std::lock_guard lk(subs_mu);
    live.insert(sub);
  }
  sub->attach();
  o->ready(Code::ok, {}, sub);
}

}  // namespace busgate::gw
