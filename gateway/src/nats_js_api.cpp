// The JetStream JSON API over the link: requests with a reply subject in the engine's API inbox,
// their answers (or a timeout, or the link's refusal), and the stream and consumer calls.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <charconv>

#include "busgate/protocol/subject.hpp"
#include "nats_js_internal.hpp"

namespace busgate::gw {

using proto::Code;

namespace js {

int64_t to_ns(uint64_t ms) {
  constexpr uint64_t kMaxMs = static_cast<uint64_t>(INT64_MAX) / 1000000;
  return static_cast<int64_t>(std::min(ms, kMaxMs) * 1000000);
}

bool to_u64(std::string_view s, uint64_t& v) {
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  return ec == std::errc{} && p == s.data() + s.size() && !s.empty();
}

int parse_status(std::string_view block, std::string_view* what, int64_t* pending) {
  if (pending) *pending = -1;
  if (!block.starts_with("NATS/1.0")) return 0;
  std::string_view line = block.substr(8, block.find('\n') - std::min<size_t>(8, block.find('\n')));
  while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.remove_suffix(1);
  while (!line.empty() && line.front() == ' ') line.remove_prefix(1);
  const size_t sp = line.find(' ');
  uint64_t code = 0;
  if (!to_u64(line.substr(0, sp), code)) return 0;
  if (what) *what = sp == std::string_view::npos ? std::string_view{} : line.substr(sp + 1);
  if (pending) {
    constexpr std::string_view key = "Nats-Pending-Messages:";
    if (const size_t p = block.find(key); p != std::string_view::npos) {
      std::string_view v = block.substr(p + key.size());
      while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
      size_t e = 0;
      while (e < v.size() && v[e] >= '0' && v[e] <= '9') ++e;
      uint64_t n = 0;
      if (to_u64(v.substr(0, e), n)) *pending = static_cast<int64_t>(std::min<uint64_t>(n, INT64_MAX));
    }
  }
  return static_cast<int>(code);
}

std::string stat_key(std::string_view stream_bus, std::string_view consumer) {
  std::string k(stream_bus);
  k.push_back(' ');
  k.append(consumer);
  return k;
}

}  // namespace js

using namespace js;

namespace {

json stream_config(const StreamSpec& s) {
  uint64_t dup = s.duplicate_window_ms;
  if (s.max_age_ms > 0 && dup > s.max_age_ms) dup = s.max_age_ms;  // JetStream requires it
  json c = {{"name", s.bus_name},
            {"subjects", s.subjects},
            {"retention", s.workqueue ? "workqueue" : "limits"},
            {"storage", s.file_storage ? "file" : "memory"},
            {"num_replicas", std::max<uint32_t>(1, s.replicas)},
            {"max_age", to_ns(s.max_age_ms)},
            {"max_bytes", s.max_bytes > 0 ? s.max_bytes : -1},
            {"max_msgs", s.max_msgs > 0 ? s.max_msgs : -1},
            {"discard", s.workqueue ? "new" : "old"}};
  if (dup > 0) c["duplicate_window"] = to_ns(dup);
  return c;
}

json consumer_request(const ConsumerSpec& c) {
  json cfg = {{"durable_name", c.name},
              {"ack_policy", "explicit"},
              {"ack_wait", to_ns(c.ack_wait_ms)},
              {"max_ack_pending", std::max<uint32_t>(1, c.max_inflight)},
              {"deliver_policy", c.deliver_all ? "all" : "new"},
              {"max_deliver", -1},  // the gateway counts attempts and dead-letters itself
              {"replay_policy", "instant"}};
  if (!c.filter.empty()) cfg["filter_subject"] = c.filter;
  return json{{"stream_name", c.stream_bus}, {"config", std::move(cfg)}};
}

}  // namespace

void NatsJetStream::Impl::request(std::string_view subject, std::string_view headers, std::string_view payload,
                                  ApiFn fn, bool now) {
  const uint64_t token = next_token.fetch_add(1);
  const std::string reply = api_prefix + std::to_string(token);
  {
    std::lock_guard lk(api_mu);
    waiting.emplace(token, Waiting{std::move(fn), Clock::now() + kApiTimeout});
  }
  const Code c = link.publish(subject, reply, headers, payload, now);
  if (c == Code::ok) return;
  ApiFn f;
  {
    std::lock_guard lk(api_mu);
    auto it = waiting.find(token);
    if (it == waiting.end()) return;
    f = std::move(it->second.fn);
    waiting.erase(it);
  }
  ApiReply r;
  r.kind = ApiReply::Kind::down;
  r.link_code = c;
  f(r);
}

void NatsJetStream::Impl::api(const std::string& subject, const json& body, ApiFn fn) {
  request(subject, {}, body.is_null() ? std::string() : body.dump(), std::move(fn));
}

void NatsJetStream::Impl::on_api(const NatsInbound& m) {
  uint64_t token = 0;
  if (!m.subject.starts_with(api_prefix) || !to_u64(m.subject.substr(api_prefix.size()), token)) return;
  Waiting w;
  {
    std::lock_guard lk(api_mu);
    auto it = waiting.find(token);
    if (it == waiting.end()) return;  // late, or already answered
    w = std::move(it->second);
    waiting.erase(it);
  }
  ApiReply r;
  if (parse_status(m.headers) == 503 && m.payload.empty()) {
    r.kind = ApiReply::Kind::no_responders;
  } else {
    r.body = json::parse(m.payload, nullptr, false);
    if (!r.body.is_object()) {
      r.error = "not a JetStream answer";
    } else if (auto e = r.body.find("error"); e != r.body.end()) {
      r.err_code = e->is_object() ? e->value("err_code", 0) : 0;
      r.transient = e->is_object() && e->value("code", 0) == 503;
      r.error = e->is_object() ? e->value("description", std::string()) : std::string();
      if (r.error.empty()) r.error = "JetStream error " + std::to_string(r.err_code);
    }
  }
  if (!w.fn(r)) {
    std::lock_guard lk(api_mu);
    waiting.emplace(token, std::move(w));
  }
}

void NatsJetStream::Impl::fail_waiting(ApiReply::Kind kind) {
  std::vector<ApiFn> fns;
  {
    std::lock_guard lk(api_mu);
    const auto now = Clock::now();
    for (auto it = waiting.begin(); it != waiting.end();) {
      if (kind == ApiReply::Kind::down || it->second.deadline <= now) {
        fns.push_back(std::move(it->second.fn));
        it = waiting.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& f : fns) {
    ApiReply r;
    r.kind = kind;
    r.link_code = Code::bus_unavailable;
    f(r);
  }
}

void NatsJetStream::Impl::create_stream(const StreamSpec& s, std::function<void(ApiReply&)> done) {
  auto cfg = std::make_shared<json>(stream_config(s));
  auto self = shared_from_this();
  api("$JS.API.STREAM.CREATE." + s.bus_name, *cfg, [self, cfg, name = s.bus_name, done](ApiReply& r) {
    if (r.err_code != kStreamNameInUse) {
      done(r);
      return true;
    }
    // It exists with another configuration: update it.
    self->api("$JS.API.STREAM.UPDATE." + name, *cfg, [done](ApiReply& r2) {
      done(r2);
      return true;
    });
    return true;
  });
}

void NatsJetStream::Impl::create_consumer(const ConsumerSpec& c, std::function<void(ApiReply&)> done) {
  api("$JS.API.CONSUMER.DURABLE.CREATE." + c.stream_bus + "." + c.name, consumer_request(c),
      [done](ApiReply& r) {
        done(r);
        return true;
      });
}

void NatsJetStream::Impl::consumer_info(const std::string& stream_bus, const std::string& name,
                                        std::function<void(ApiReply&)> done) {
  api("$JS.API.CONSUMER.INFO." + stream_bus + "." + name, json(), [done](ApiReply& r) {
    done(r);
    return true;
  });
}

std::optional<StreamSpec> NatsJetStream::Impl::stream_spec_of(const std::string& bus_name) {
  std::lock_guard lk(cfg_mu);
  for (const auto& s : streams)
    if (s.bus_name == bus_name) return s;
  return std::nullopt;
}

bool NatsJetStream::Impl::stored_subject(std::string_view subject) {
  std::lock_guard lk(cfg_mu);
  for (const auto& s : streams)
    for (const auto& p : s.subjects)
      if (proto::subject_matches(p, subject)) return true;
  return false;
}

}  // namespace busgate::gw
