#include "config.hpp"
#include "nats_auth.hpp"

#include <openssl/evp.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include "busgate/protocol/subject.hpp"
#include "config_check.hpp"
#include "config_secret.hpp"
#include "tenancy.hpp"

namespace busgate::gw {
namespace {

[[noreturn]] void fail(const std::string& key, const std::string& what) { throw ConfigError(key + ": " + what); }

void only_keys(const YAML::Node& node, const std::string& where, std::initializer_list<const char*> keys) {
  if (!node.IsMap()) fail(where.empty() ? "(top level)" : where, "must be a mapping");
  for (const auto& kv : node) {
    const auto k = kv.first.as<std::string>();
    if (std::none_of(keys.begin(), keys.end(), [&](const char* a) { return k == a; }))
      fail(where.empty() ? k : where + "." + k, "unknown key");
  }
}


template <typename T>
T get_num(const YAML::Node& n, const std::string& key, T lo, T hi) {
  try {
    const auto v = n.as<double>();
    if (v < static_cast<double>(lo) || v > static_cast<double>(hi))
      fail(key, "must be between " + std::to_string(lo) + " and " + std::to_string(hi));
    if constexpr (std::is_integral_v<T>) {
      if (v != static_cast<double>(static_cast<T>(v))) fail(key, "must be a whole number");
    }
    return static_cast<T>(v);
  } catch (const YAML::Exception&) {
    fail(key, "must be a number");
  }
}

std::string get_str(const YAML::Node& n, const std::string& key) {
  if (!n.IsScalar()) fail(key, "must be a string");
  return n.as<std::string>();
}

bool get_bool(const YAML::Node& n, const std::string& key) {
  bool v = false;
  if (!n.IsScalar() || !YAML::convert<bool>::decode(n, v)) fail(key, "must be true or false");
  return v;
}

std::vector<std::string> get_str_list(const YAML::Node& n, const std::string& key) {
  if (n.IsScalar()) return {n.as<std::string>()};
  if (!n.IsSequence()) fail(key, "must be a list of strings");
  std::vector<std::string> out;
  for (size_t i = 0; i < n.size(); ++i) out.push_back(get_str(n[i], key + "[" + std::to_string(i) + "]"));
  return out;
}

void check_pattern(const std::string& p, const std::string& key) {
  if (proto::validate_subject(p, true) != proto::Code::ok) fail(key, "'" + p + "' is not a valid subject pattern");
}

PatternRules parse_rules(const YAML::Node& n, const std::string& key) {
  PatternRules r;
  if (n.IsSequence() || n.IsScalar()) {  // shorthand: a list of allowed patterns
    r.allow = get_str_list(n, key);
  } else {
    only_keys(n, key, {"allow", "deny"});
    if (n["allow"]) r.allow = get_str_list(n["allow"], key + ".allow");
    if (n["deny"]) r.deny = get_str_list(n["deny"], key + ".deny");
  }
  for (size_t i = 0; i < r.allow.size(); ++i) check_pattern(r.allow[i], key + ".allow[" + std::to_string(i) + "]");
  for (size_t i = 0; i < r.deny.size(); ++i) check_pattern(r.deny[i], key + ".deny[" + std::to_string(i) + "]");
  return r;
}

bool is_hex_digest(const std::string& s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

// A prefix pattern ("a.b.>") or an exact subject; returns the literal part for prefix patterns.
void check_import_pattern(const std::string& p, const std::string& key) {
  if (proto::validate_subject(p, true) != proto::Code::ok) fail(key, "'" + p + "' is not a valid subject pattern");
  const bool tail = p == ">" || (p.size() > 2 && p.ends_with(".>"));
  const std::string head = tail ? (p == ">" ? "" : p.substr(0, p.size() - 2)) : p;
  if (!head.empty() && proto::has_wildcard(head))
    fail(key, "'" + p + "' may only use a trailing '>' wildcard");
}

bool name_chars(const std::string& s, bool underscore) {
  return !s.empty() && s.size() <= 64 && std::all_of(s.begin(), s.end(), [&](char c) {
           return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || (underscore && c == '_');
         });
}

void parse_settings(const YAML::Node& n, const std::string& k, ConsumerSettings& s) {
  if (n["ack_wait_ms"]) s.ack_wait_ms = get_num<uint64_t>(n["ack_wait_ms"], k + ".ack_wait_ms", 100, 86400000ULL * 7);
  if (n["max_deliveries"]) s.max_deliveries = get_num<uint32_t>(n["max_deliveries"], k + ".max_deliveries", 1, 1000000);
  if (n["backoff_ms"]) {
    const auto b = n["backoff_ms"];
    if (!b.IsSequence()) fail(k + ".backoff_ms", "must be a list of milliseconds");
    s.backoff_ms.clear();
    for (size_t i = 0; i < b.size(); ++i)
      s.backoff_ms.push_back(get_num<uint64_t>(b[i], k + ".backoff_ms[" + std::to_string(i) + "]", 0, 86400000ULL * 7));
  }
}

// streams, consumers and consumer_defaults of one tenant, with the rules of docs/configuration.md.
void parse_durable(const YAML::Node& n, const std::string& key, TenantConfig& t) {
  if (const auto d = n["consumer_defaults"]) {
    only_keys(d, key + ".consumer_defaults", {"ack_wait_ms", "max_deliveries", "backoff_ms"});
    parse_settings(d, key + ".consumer_defaults", t.consumer_defaults);
  }
  if (const auto ss = n["streams"]) {
    if (!ss.IsSequence()) fail(key + ".streams", "must be a list");
    if (!name_chars(t.name, true))
      fail(key + ".name", "a tenant with streams needs a name of letters, digits, '-' and '_'");
    for (size_t i = 0; i < ss.size(); ++i) {
      const std::string k = key + ".streams[" + std::to_string(i) + "]";
      const auto& s = ss[i];
      only_keys(s, k, {"name", "subjects", "retention", "storage", "replicas", "max_age_ms", "max_bytes", "max_msgs",
                       "duplicate_window_ms"});
      StreamConfig sc;
      if (!s["name"]) fail(k + ".name", "is required");
      sc.name = get_str(s["name"], k + ".name");
      if (!name_chars(sc.name, false)) fail(k + ".name", "must be 1 to 64 letters, digits and '-'");
      for (const auto& o : t.streams)
        if (o.name == sc.name) fail(k + ".name", "duplicate stream name '" + sc.name + "'");
      if (!s["subjects"]) fail(k + ".subjects", "is required");
      sc.subjects = get_str_list(s["subjects"], k + ".subjects");
      if (sc.subjects.empty()) fail(k + ".subjects", "needs at least one subject");
      for (size_t j = 0; j < sc.subjects.size(); ++j) {
        const std::string sk = k + ".subjects[" + std::to_string(j) + "]";
        check_pattern(sc.subjects[j], sk);
        if (proto::is_reserved_subject(sc.subjects[j]) || sc.subjects[j].starts_with("_INBOX."))
          fail(sk, "'" + sc.subjects[j] + "' is reserved");
        for (const auto& o : t.streams)
          for (const auto& os : o.subjects)
            if (patterns_overlap(os, sc.subjects[j]))
              fail(sk, "'" + sc.subjects[j] + "' overlaps '" + os + "' of stream '" + o.name + "'");
        for (size_t m = 0; m < j; ++m)
          if (patterns_overlap(sc.subjects[m], sc.subjects[j]))
            fail(sk, "'" + sc.subjects[j] + "' overlaps '" + sc.subjects[m] + "'");
      }
      if (s["retention"]) {
        const auto r = get_str(s["retention"], k + ".retention");
        if (r == "workqueue") sc.workqueue = true;
        else if (r == "limits") sc.workqueue = false;
        else fail(k + ".retention", "must be 'workqueue' or 'limits'");
      }
      if (s["storage"]) {
        const auto r = get_str(s["storage"], k + ".storage");
        if (r == "file") sc.file_storage = true;
        else if (r == "memory") sc.file_storage = false;
        else fail(k + ".storage", "must be 'file' or 'memory'");
      }
      if (s["replicas"]) sc.replicas = get_num<uint32_t>(s["replicas"], k + ".replicas", 1, 5);
      if (s["max_age_ms"]) sc.max_age_ms = get_num<uint64_t>(s["max_age_ms"], k + ".max_age_ms", 0, 1ULL << 50);
      if (s["max_bytes"]) sc.max_bytes = get_num<uint64_t>(s["max_bytes"], k + ".max_bytes", 0, 1ULL << 50);
      if (s["max_msgs"]) sc.max_msgs = get_num<uint64_t>(s["max_msgs"], k + ".max_msgs", 0, 1ULL << 50);
      if (s["duplicate_window_ms"])
        sc.duplicate_window_ms = get_num<uint64_t>(s["duplicate_window_ms"], k + ".duplicate_window_ms", 0, 86400000ULL);
      t.streams.push_back(std::move(sc));
    }
  }
  if (const auto cs = n["consumers"]) {
    if (!cs.IsSequence()) fail(key + ".consumers", "must be a list");
    for (size_t i = 0; i < cs.size(); ++i) {
      const std::string k = key + ".consumers[" + std::to_string(i) + "]";
      const auto& c = cs[i];
      only_keys(c, k, {"name", "stream", "subject", "max_inflight", "ack_wait_ms", "max_deliveries", "backoff_ms",
                       "dead_letter"});
      ConsumerConfig cc;
      if (!c["name"]) fail(k + ".name", "is required");
      cc.name = get_str(c["name"], k + ".name");
      if (!name_chars(cc.name, true)) fail(k + ".name", "must be 1 to 64 letters, digits, '-' and '_'");
      for (const auto& o : t.consumers)
        if (o.name == cc.name) fail(k + ".name", "duplicate consumer name '" + cc.name + "'");
      if (!c["stream"]) fail(k + ".stream", "is required");
      cc.stream = get_str(c["stream"], k + ".stream");
      const StreamConfig* st = nullptr;
      for (const auto& s : t.streams)
        if (s.name == cc.stream) st = &s;
      if (!st) fail(k + ".stream", "no stream '" + cc.stream + "' in this tenant");
      if (c["subject"]) {
        cc.subject = get_str(c["subject"], k + ".subject");
        check_pattern(cc.subject, k + ".subject");
      } else if (st->subjects.size() == 1) {
        cc.subject = st->subjects[0];
      } else {
        fail(k + ".subject", "is required when the stream has more than one subject");
      }
      if (std::none_of(st->subjects.begin(), st->subjects.end(),
                       [&](const std::string& s) { return pattern_covers(s, cc.subject); }))
        fail(k + ".subject", "'" + cc.subject + "' is not stored by stream '" + cc.stream + "'");
      if (c["max_inflight"]) cc.max_inflight = get_num<uint32_t>(c["max_inflight"], k + ".max_inflight", 1, 1000000);
      cc.settings = ConsumerSettings{};
      parse_settings(c, k, cc.settings);
      cc.dead_letter = c["dead_letter"] ? get_str(c["dead_letter"], k + ".dead_letter") : "deadletter." + cc.name;
      if (proto::validate_subject(cc.dead_letter, false) != proto::Code::ok || proto::is_reserved_subject(cc.dead_letter))
        fail(k + ".dead_letter", "'" + cc.dead_letter + "' is not a valid literal subject");
      if (patterns_overlap(cc.subject, cc.dead_letter))
        fail(k + ".dead_letter", "'" + cc.dead_letter + "' is matched by the consumer's own subject '" + cc.subject +
                                     "': dead letters would come back to it");
      if (st->workqueue)
        for (const auto& o : t.consumers)
          if (o.stream == cc.stream && patterns_overlap(o.subject, cc.subject))
            fail(k + ".subject", "'" + cc.subject + "' overlaps consumer '" + o.name + "' ('" + o.subject +
                                     "') on workqueue stream '" + cc.stream + "'");
      t.consumers.push_back(std::move(cc));
    }
  }
}

TenantConfig parse_tenant(const YAML::Node& n, const std::string& key) {
  only_keys(n, key, {"name", "tokens_sha256", "tokens", "prefix", "permissions", "imports", "limits", "streams",
                     "consumers", "consumer_defaults"});
  TenantConfig t;
  if (!n["name"]) fail(key + ".name", "is required");
  t.name = get_str(n["name"], key + ".name");
  if (t.name.empty() || proto::validate_subject(t.name, false) != proto::Code::ok || t.name.find('.') != std::string::npos)
    fail(key + ".name", "must be one subject token (letters, digits, '-', '_')");
  if (n["tokens_sha256"]) {
    for (auto& v : resolve_secret_list(n["tokens_sha256"], key + ".tokens_sha256")) {
      auto& h = v.text;
      std::transform(h.begin(), h.end(), h.begin(), [](char c) { return static_cast<char>(std::tolower(c)); });
      if (!is_hex_digest(h)) secret_error(v, "must be a 64-hex-digit SHA-256 digest");
      t.token_sha256.push_back(h);
    }
  }
  if (n["tokens"]) {  // plain tokens are hashed at load; only the digest is kept in memory
    for (const auto& v : resolve_secret_list(n["tokens"], key + ".tokens")) {
      if (v.text.size() < 8) secret_error(v, "tokens must be at least 8 characters");
      t.token_sha256.push_back(sha256_hex(v.text));
    }
  }
  if (t.token_sha256.empty()) fail(key + ".tokens_sha256", "at least one token digest is required");
  t.prefix = n["prefix"] ? get_str(n["prefix"], key + ".prefix") : "t." + t.name + ".";
  if (!t.prefix.empty()) {
    if (!t.prefix.ends_with('.') ||
        proto::validate_subject(t.prefix.substr(0, t.prefix.size() - 1), false) != proto::Code::ok)
      fail(key + ".prefix", "must be subject tokens ending with '.', e.g. 't.acme.'");
  }
  if (const auto p = n["permissions"]) {
    only_keys(p, key + ".permissions", {"publish", "subscribe", "request"});
    if (p["publish"]) t.permissions.publish = parse_rules(p["publish"], key + ".permissions.publish");
    if (p["subscribe"]) t.permissions.subscribe = parse_rules(p["subscribe"], key + ".permissions.subscribe");
    if (p["request"]) t.permissions.request = parse_rules(p["request"], key + ".permissions.request");
  }
  if (const auto im = n["imports"]) {
    if (!im.IsSequence()) fail(key + ".imports", "must be a list");
    for (size_t i = 0; i < im.size(); ++i) {
      const std::string k = key + ".imports[" + std::to_string(i) + "]";
      only_keys(im[i], k, {"kind", "from", "to"});
      Import imp;
      const std::string kind = im[i]["kind"] ? get_str(im[i]["kind"], k + ".kind") : "service";
      if (kind == "service") imp.kind = Import::Kind::service;
      else if (kind == "stream") imp.kind = Import::Kind::stream;
      else fail(k + ".kind", "must be 'service' or 'stream'");
      if (!im[i]["from"]) fail(k + ".from", "is required");
      if (!im[i]["to"]) fail(k + ".to", "is required");
      imp.from = get_str(im[i]["from"], k + ".from");
      imp.to = get_str(im[i]["to"], k + ".to");
      check_import_pattern(imp.from, k + ".from");
      check_import_pattern(imp.to, k + ".to");
      if (imp.from.ends_with(">") != imp.to.ends_with(">"))
        fail(k + ".to", "must have the same shape as 'from' (both end with '>' or neither)");
      t.imports.push_back(imp);
    }
  }
  if (const auto l = n["limits"]) {
    only_keys(l, key + ".limits",
              {"max_connections", "max_subscriptions", "max_payload", "publish_msgs_per_sec", "publish_bytes_per_sec",
               "max_inflight_requests", "max_consumers", "max_consumer_inflight"});
    auto& lim = t.limits;
    const std::string k = key + ".limits.";
    if (l["max_connections"]) lim.max_connections = get_num<uint32_t>(l["max_connections"], k + "max_connections", 1, 10000000);
    if (l["max_subscriptions"])
      lim.max_subscriptions = get_num<uint32_t>(l["max_subscriptions"], k + "max_subscriptions", 1, 10000000);
    if (l["max_payload"]) lim.max_payload = get_num<uint32_t>(l["max_payload"], k + "max_payload", 1, 64 * 1024 * 1024);
    if (l["publish_msgs_per_sec"])
      lim.publish_msgs_per_sec = get_num<double>(l["publish_msgs_per_sec"], k + "publish_msgs_per_sec", 0, 1e9);
    if (l["publish_bytes_per_sec"])
      lim.publish_bytes_per_sec = get_num<double>(l["publish_bytes_per_sec"], k + "publish_bytes_per_sec", 0, 1e12);
    if (l["max_inflight_requests"])
      lim.max_inflight_requests = get_num<uint32_t>(l["max_inflight_requests"], k + "max_inflight_requests", 1, 10000000);
    if (l["max_consumers"]) lim.max_consumers = get_num<uint32_t>(l["max_consumers"], k + "max_consumers", 0, 100000);
    if (l["max_consumer_inflight"])
      lim.max_consumer_inflight = get_num<uint32_t>(l["max_consumer_inflight"], k + "max_consumer_inflight", 1, 1000000);
  }
  parse_durable(n, key, t);
  return t;
}

// <hostname>-<pid> in the node_id grammar: other characters become '-', the hostname is cut to fit.
std::string default_node_id() {
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  const std::string pid = "-" + std::to_string(getpid());
  const std::string h = node_id_from(host);
  return (h.empty() ? std::string("node") : h).substr(0, 64 - pid.size()) + pid;
}

}  // namespace

Endpoint parse_endpoint(const std::string& text, const std::string& key) {
  const auto colon = text.rfind(':');
  if (colon == std::string::npos) fail(key, "'" + text + "' must be HOST:PORT");
  Endpoint e;
  e.host = text.substr(0, colon);
  if (e.host.size() >= 2 && e.host.front() == '[' && e.host.back() == ']') e.host = e.host.substr(1, e.host.size() - 2);
  if (e.host.empty()) e.host = "0.0.0.0";
  const std::string port = text.substr(colon + 1);
  if (port.empty() || port.size() > 5 || !std::all_of(port.begin(), port.end(), ::isdigit) || std::stoi(port) > 65535)
    fail(key, "'" + text + "' has an invalid port");
  e.port = static_cast<uint16_t>(std::stoi(port));
  return e;
}

GatewayConfig parse_config(const std::string& text) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw ConfigError("YAML syntax error at line " + std::to_string(e.mark.line + 1) + ": " + e.msg);
  }
  GatewayConfig c;
  if (!root || root.IsNull()) throw ConfigError("(top level): the configuration is empty");
  try {
    only_keys(root, "",
              {"node_id", "listen", "tls", "threads", "log", "timeouts", "limits", "admin", "debug_console", "bus",
               "tenants"});
    if (root["node_id"]) {
      c.node_id = get_str(root["node_id"], "node_id");
      if (!valid_node_id(c.node_id))
        fail("node_id", "must be 1 to 64 letters, digits, '-' and '_' (it is a token of bus subjects)");
    }
    if (const auto l = root["listen"]) {
      only_keys(l, "listen", {"tcp", "http", "tls", "https"});
      auto endpoint_or_off = [](const YAML::Node& n, const std::string& key) -> std::optional<Endpoint> {
        const auto s = get_str(n, key);
        if (s == "off" || s.empty()) return std::nullopt;
        return parse_endpoint(s, key);
      };
      if (l["tcp"]) c.tcp = endpoint_or_off(l["tcp"], "listen.tcp");
      if (l["http"]) c.http = endpoint_or_off(l["http"], "listen.http");
      if (l["tls"]) c.tls = endpoint_or_off(l["tls"], "listen.tls");
      if (l["https"]) c.https = endpoint_or_off(l["https"], "listen.https");
    }
    if (const auto t = root["tls"]) {
      only_keys(t, "tls", {"cert_file", "key_file", "client_ca_file"});
      if (t["cert_file"]) c.tls_files.cert_file = get_str(t["cert_file"], "tls.cert_file");
      if (t["key_file"]) c.tls_files.key_file = get_str(t["key_file"], "tls.key_file");
      if (t["client_ca_file"]) c.tls_files.client_ca_file = get_str(t["client_ca_file"], "tls.client_ca_file");
      if (c.tls_files.cert_file.empty() != c.tls_files.key_file.empty())
        fail(c.tls_files.cert_file.empty() ? "tls.cert_file" : "tls.key_file", "is required with the other");
    }
    if ((c.tls || c.https) && !c.tls_files.enabled())
      fail(c.tls ? "listen.tls" : "listen.https", "needs tls.cert_file and tls.key_file");
    if (root["debug_console"]) c.debug_console = get_bool(root["debug_console"], "debug_console");
    if (root["threads"]) c.threads = get_num<unsigned>(root["threads"], "threads", 0, 256);
    if (const auto l = root["log"]) {
      only_keys(l, "log", {"level", "format"});
      if (l["level"]) {
        c.log_level = get_str(l["level"], "log.level");
        static const std::set<std::string> levels{"trace", "debug", "info", "warn", "error", "critical", "off"};
        if (!levels.count(c.log_level)) fail("log.level", "must be one of trace, debug, info, warn, error, off");
      }
      if (l["format"]) {
        c.log_format = get_str(l["format"], "log.format");
        if (c.log_format != "text" && c.log_format != "json") fail("log.format", "must be 'text' or 'json'");
      }
    }
    if (const auto t = root["timeouts"]) {
      only_keys(t, "timeouts",
                {"handshake_ms", "heartbeat_ms", "min_heartbeat_ms", "request_ms", "max_request_ms", "drain_ms",
                 "goaway_delay_ms"});
      if (t["handshake_ms"]) c.handshake_timeout_ms = get_num<uint32_t>(t["handshake_ms"], "timeouts.handshake_ms", 10, 600000);
      if (t["heartbeat_ms"]) c.heartbeat_ms = get_num<uint32_t>(t["heartbeat_ms"], "timeouts.heartbeat_ms", 10, 3600000);
      if (t["min_heartbeat_ms"])
        c.min_heartbeat_ms = get_num<uint32_t>(t["min_heartbeat_ms"], "timeouts.min_heartbeat_ms", 10, 3600000);
      if (t["request_ms"]) c.request_timeout_ms = get_num<uint32_t>(t["request_ms"], "timeouts.request_ms", 1, 3600000);
      if (t["max_request_ms"])
        c.max_request_timeout_ms = get_num<uint32_t>(t["max_request_ms"], "timeouts.max_request_ms", 1, 3600000);
      if (t["drain_ms"]) c.drain_timeout_ms = get_num<uint32_t>(t["drain_ms"], "timeouts.drain_ms", 0, 3600000);
      if (t["goaway_delay_ms"])
        c.goaway_delay_ms = get_num<uint32_t>(t["goaway_delay_ms"], "timeouts.goaway_delay_ms", 0, 3600000);
      if (c.request_timeout_ms > c.max_request_timeout_ms)
        fail("timeouts.request_ms", "must not be above timeouts.max_request_ms");
      if (c.min_heartbeat_ms > c.heartbeat_ms)
        fail("timeouts.min_heartbeat_ms", "must not be above timeouts.heartbeat_ms (" + std::to_string(c.heartbeat_ms) + ")");
      if (c.goaway_delay_ms > c.drain_timeout_ms)
        fail("timeouts.goaway_delay_ms", "must not be above timeouts.drain_ms");
    }
    if (const auto l = root["limits"]) {
      only_keys(l, "limits",
                {"max_pending_bytes", "max_backlog_bytes", "max_tenant_queued_bytes", "max_queued_bytes",
                 "auth_failures_burst", "auth_failures_per_sec"});
      if (l["max_pending_bytes"])
        c.max_pending_bytes = get_num<uint32_t>(l["max_pending_bytes"], "limits.max_pending_bytes", 4096, 1u << 31);
      if (l["max_backlog_bytes"])
        c.max_backlog_bytes =
            get_num<uint64_t>(l["max_backlog_bytes"], "limits.max_backlog_bytes", 1u << 20, uint64_t{1} << 36);
      if (l["max_tenant_queued_bytes"])
        c.max_tenant_queued_bytes = get_num<uint64_t>(l["max_tenant_queued_bytes"], "limits.max_tenant_queued_bytes",
                                                      1u << 20, uint64_t{1} << 40);
      if (l["max_queued_bytes"])
        c.max_queued_bytes =
            get_num<uint64_t>(l["max_queued_bytes"], "limits.max_queued_bytes", 1u << 20, uint64_t{1} << 40);
      if (l["auth_failures_burst"])
        c.auth_failures_burst =
            get_num<uint32_t>(l["auth_failures_burst"], "limits.auth_failures_burst", 0, 1000000);
      if (l["auth_failures_per_sec"])
        c.auth_failures_per_sec =
            get_num<double>(l["auth_failures_per_sec"], "limits.auth_failures_per_sec", 0, 1000000);
    }
    if (const auto a = root["admin"]) {
      only_keys(a, "admin", {"token_sha256", "token"});
      if (a["token_sha256"]) {
        const auto v = resolve_secret(a["token_sha256"], "admin.token_sha256");
        if (!is_hex_digest(v.text)) secret_error(v, "must be a 64-hex-digit SHA-256 digest");
        c.admin_token_sha256 = v.text;
      }
      if (a["token"]) {  // an empty token would open the admin API to "Authorization: Bearer "
        const auto v = resolve_secret(a["token"], "admin.token");
        if (v.text.empty()) fail("admin.token", "must not be empty (leave admin out to disable the admin API)");
        c.admin_token_sha256 = sha256_hex(v.text);
      }
    }
    if (const auto b = root["bus"]) {
      only_keys(b, "bus", {"kind", "servers", "user", "password", "token", "creds_file", "tls", "name"});
      if (b["kind"]) c.bus.kind = get_str(b["kind"], "bus.kind");
      if (c.bus.kind != "memory" && c.bus.kind != "nats") fail("bus.kind", "must be 'memory' or 'nats'");
      if (b["servers"]) c.bus.servers = get_str_list(b["servers"], "bus.servers");
      if (b["user"]) c.bus.user = resolve_secret(b["user"], "bus.user").text;
      if (b["password"]) c.bus.password = resolve_secret(b["password"], "bus.password").text;
      if (b["token"]) c.bus.token = resolve_secret(b["token"], "bus.token").text;
      if (b["creds_file"]) {
        c.bus.creds_file = get_str(b["creds_file"], "bus.creds_file");
        load_nats_creds(c.bus.creds_file);  // a missing or malformed file is a configuration error
      }
      if (b["name"]) c.bus.name = get_str(b["name"], "bus.name");
      if (const auto t = b["tls"]) {
        only_keys(t, "bus.tls", {"ca", "cert", "key"});
        if (t["ca"]) c.bus.tls_ca = get_str(t["ca"], "bus.tls.ca");
        if (t["cert"]) c.bus.tls_cert = get_str(t["cert"], "bus.tls.cert");
        if (t["key"]) c.bus.tls_key = get_str(t["key"], "bus.tls.key");
      }
      if (c.bus.kind == "nats" && c.bus.servers.empty()) fail("bus.servers", "is required when bus.kind is 'nats'");
    }
    if (const auto ts = root["tenants"]) {
      if (!ts.IsSequence()) fail("tenants", "must be a list");
      std::set<std::string> names, prefixes;
      for (size_t i = 0; i < ts.size(); ++i) {
        const std::string key = "tenants[" + std::to_string(i) + "]";
        auto t = parse_tenant(ts[i], key);
        if (!names.insert(t.name).second) fail(key + ".name", "duplicate tenant name '" + t.name + "'");
        if (!prefixes.insert(t.prefix).second) fail(key + ".prefix", "two tenants share the prefix '" + t.prefix + "'");
        c.tenants.push_back(std::move(t));
      }
      // A token belongs to one tenant only.
      std::set<std::string> digests;
      for (size_t i = 0; i < c.tenants.size(); ++i)
        for (const auto& d : c.tenants[i].token_sha256)
          if (!digests.insert(d).second)
            fail("tenants[" + std::to_string(i) + "].tokens_sha256", "a token digest is used by two tenants");
      // Namespaces and imports keep every tenant to its own subjects (docs/protocol.md section 9).
      check_isolation(c.tenants);
    }
    if (c.tenants.empty()) fail("tenants", "at least one tenant is required");
  } catch (const YAML::Exception& e) {
    throw ConfigError("YAML error at line " + std::to_string(e.mark.line + 1) + ": " + e.msg);
  }
  if (c.node_id.empty()) c.node_id = default_node_id();
  if (c.bus.name.empty()) c.bus.name = "busgate-" + c.node_id;
  return c;
}

GatewayConfig load_config_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ConfigError(path + ": cannot read the file");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_config(ss.str());
}

GatewayConfig dev_config() {
  GatewayConfig c;
  c.node_id = default_node_id();
  c.bus.name = "busgate-" + c.node_id;
  TenantConfig demo;
  demo.name = "demo";
  demo.prefix = "t.demo.";
  demo.token_sha256 = {sha256_hex(kDevToken)};
  // A work queue to try durable consumption with (docs/protocol.md section 16): jobs.> is stored,
  // consumer "workers" runs at most 15 at once, dead letters are kept under deadletter.>.
  StreamConfig jobs;
  jobs.name = "jobs";
  jobs.subjects = {"jobs.>"};
  StreamConfig dead;
  dead.name = "dead";
  dead.subjects = {"deadletter.>"};
  dead.workqueue = false;
  demo.streams = {jobs, dead};
  ConsumerConfig workers;
  workers.name = "workers";
  workers.stream = "jobs";
  workers.subject = "jobs.>";
  workers.max_inflight = 15;
  workers.dead_letter = "deadletter.workers";
  demo.consumers = {workers};
  c.tenants.push_back(demo);
  c.admin_token_sha256 = sha256_hex(kDevAdminToken);
  return c;
}

std::string sha256_hex(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < len; ++i) {
    out += hex[md[i] >> 4];
    out += hex[md[i] & 15];
  }
  return out;
}

}  // namespace busgate::gw
