#include "durable.hpp"

#include <string>

#include "busgate/protocol/msgpack.hpp"
#include "config.hpp"

namespace busgate::gw {

namespace {

// Header values follow docs/protocol.md section 11: no CR or LF, at most 4096 bytes, UTF-8 (cut at
// a character boundary).
std::string header_value(std::string_view v, size_t max) {
  std::string out;
  out.reserve(std::min(v.size(), max));
  size_t i = 0;
  while (i < v.size()) {
    const auto c = static_cast<unsigned char>(v[i]);
    const size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : 4;
    if (out.size() + len > max) break;
    if (c == '\r' || c == '\n') out.push_back(' ');
    else out.append(v.substr(i, len));
    i += len;
  }
  return out;
}

constexpr uint32_t kMaxOriginalHeaders = 58;  // leaves room for the five dead-letter headers

}  // namespace

BusMessagePtr make_dead_letter(const BusMessage& msg, const ConsumerSpec& spec, std::string_view client_subject,
                               std::string_view reason, uint32_t attempts) {
  std::string headers;
  proto::mp::Writer w(headers);
  // The original entries (already a valid msgpack map of str → str), minus any gateway-set entry
  // that the dead letter sets itself.
  std::vector<std::pair<std::string_view, std::string_view>> kept;
  if (!msg.headers.empty()) {
    proto::mp::Reader rd(msg.headers);
    uint32_t n = 0;
    if (rd.read_map(n)) {
      for (uint32_t i = 0; i < n; ++i) {
        std::string_view k, v;
        if (!rd.read_str(k) || !rd.read_str(v)) break;
        if (k.starts_with("busgate-dead-reason") || k == "busgate-attempts" || k == "busgate-subject" ||
            k == "busgate-stream" || k == "busgate-consumer")
          continue;
        if (kept.size() < kMaxOriginalHeaders) kept.emplace_back(k, v);
      }
    }
  }
  w.map_header(static_cast<uint32_t>(kept.size() + 5));
  for (const auto& [k, v] : kept) {
    w.str(k);
    w.str(v);
  }
  w.str("busgate-dead-reason");
  w.str(header_value(reason, 1100));
  w.str("busgate-attempts");
  w.str(std::to_string(attempts));
  w.str("busgate-subject");
  w.str(header_value(client_subject, 4096));
  w.str("busgate-stream");
  w.str(spec.stream);
  w.str("busgate-consumer");
  w.str(spec.name);
  return std::make_shared<BusMessage>(spec.dead_letter, std::string_view{}, headers, msg.payload);
}

StreamSpec stream_spec(const TenantConfig& t, const StreamConfig& s) {
  StreamSpec out;
  out.tenant = t.name;
  out.name = s.name;
  out.bus_name = "busgate_" + t.name + "_" + s.name;
  for (const auto& subj : s.subjects) out.subjects.push_back(t.prefix + subj);
  out.workqueue = s.workqueue;
  out.max_age_ms = s.max_age_ms;
  out.max_bytes = s.max_bytes ? static_cast<int64_t>(s.max_bytes) : -1;
  out.max_msgs = s.max_msgs ? static_cast<int64_t>(s.max_msgs) : -1;
  out.file_storage = s.file_storage;
  out.replicas = s.replicas;
  out.duplicate_window_ms = s.duplicate_window_ms;
  return out;
}

ConsumerSpec consumer_spec(const TenantConfig& t, const StreamConfig& s, const ConsumerConfig& c) {
  ConsumerSpec out;
  out.tenant = t.name;
  out.name = c.name;
  out.stream = s.name;
  out.stream_bus = "busgate_" + t.name + "_" + s.name;
  out.filter = t.prefix + c.subject;
  out.filter_client = c.subject;
  out.max_inflight = c.max_inflight;
  out.ack_wait_ms = c.settings.ack_wait_ms;
  out.max_deliveries = c.settings.max_deliveries;
  out.backoff_ms = c.settings.backoff_ms;
  out.dead_letter = t.prefix + c.dead_letter;
  out.dead_letter_client = c.dead_letter;
  out.deliver_all = true;
  out.declared = true;
  out.tenant_prefix = t.prefix;
  return out;
}

void durable_specs(const std::vector<TenantConfig>& tenants, std::vector<StreamSpec>& streams,
                   std::vector<ConsumerSpec>& consumers) {
  for (const auto& t : tenants) {
    for (const auto& s : t.streams) streams.push_back(stream_spec(t, s));
    for (const auto& c : t.consumers)
      for (const auto& s : t.streams)
        if (s.name == c.stream) consumers.push_back(consumer_spec(t, s, c));
  }
}

}  // namespace busgate::gw
