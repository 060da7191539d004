#pragma once
// Gateway configuration: the YAML file's model, its validation, and the --dev default.

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace busgate::gw {

struct Endpoint {
  std::string host = "127.0.0.1";
  uint16_t port = 0;
  std::string str() const { return host + ":" + std::to_string(port); }
};

struct PatternRules {
  std::vector<std::string> allow{">"};
  std::vector<std::string> deny;
};

struct Permissions {
  PatternRules publish;
  PatternRules subscribe;
  PatternRules request;
};

struct Import {
  enum class Kind { service, stream } kind = Kind::service;
  std::string from;  // client-visible pattern: "data.>" or an exact subject
  std::string to;    // bus pattern of the same shape: "svc.data.>"
};

struct TenantLimits {
  uint32_t max_connections = 1000;
  uint32_t max_subscriptions = 10000;   // per connection
  uint32_t max_payload = 1048576;
  double publish_msgs_per_sec = 0;      // 0 = unlimited
  double publish_bytes_per_sec = 0;     // 0 = unlimited
  uint32_t max_inflight_requests = 1000;  // concurrent REQs across the tenant's connections
  uint32_t max_consumers = 10;            // durable consumers clients may create with SUB opts
  uint32_t max_consumer_inflight = 100;   // ceiling (and default) of a client-created consumer's cap
};

// A stream of the tenant (docs/configuration.md "Streams and durable consumers").
struct StreamConfig {
  std::string name;
  std::vector<std::string> subjects;  // tenant-relative patterns
  bool workqueue = true;              // retention: workqueue | limits
  bool file_storage = true;
  uint32_t replicas = 1;
  uint64_t max_age_ms = 0;  // 0 = unlimited
  uint64_t max_bytes = 0;
  uint64_t max_msgs = 0;
  uint64_t duplicate_window_ms = 120000;
};

struct ConsumerSettings {
  uint64_t ack_wait_ms = 30000;
  uint32_t max_deliveries = 5;
  std::vector<uint64_t> backoff_ms;
};

struct ConsumerConfig {
  std::string name;
  std::string stream;
  std::string subject;      // tenant-relative filter
  uint32_t max_inflight = 15;
  ConsumerSettings settings;
  std::string dead_letter;  // tenant-relative subject; default "deadletter.<name>"
};

struct TenantConfig {
  std::string name;
  std::vector<std::string> token_sha256;  // lowercase hex digests
  std::string prefix;                     // bus namespace, default "t.<name>."
  Permissions permissions;
  std::vector<Import> imports;
  TenantLimits limits;
  std::vector<StreamConfig> streams;
  std::vector<ConsumerConfig> consumers;
  ConsumerSettings consumer_defaults;  // for consumers created by clients
};

struct BusConfig {
  std::string kind = "memory";  // memory | nats
  std::vector<std::string> servers;
  std::string user, password, token, creds_file;
  std::string tls_ca, tls_cert, tls_key;
  std::string name;  // connection name, default "busgate-<node_id>"
};

struct TlsConfig {
  std::string cert_file;       // PEM certificate chain
  std::string key_file;        // PEM private key
  std::string client_ca_file;  // PEM CA bundle: when set, clients must present a certificate it signed
  bool enabled() const { return !cert_file.empty(); }
};

struct GatewayConfig {
  std::string node_id;  // default: hostname-pid
  std::optional<Endpoint> tcp = Endpoint{"127.0.0.1", 7422};
  std::optional<Endpoint> http = Endpoint{"127.0.0.1", 7480};
  std::optional<Endpoint> tls;    // busgate over TLS (busgate+tls://); needs `tls`
  std::optional<Endpoint> https;  // HTTPS and WSS; needs `tls`
  TlsConfig tls_files;
  unsigned threads = 0;  // 0 = one per core
  std::string log_level = "info";
  std::string log_format = "text";  // text | json
  uint32_t handshake_timeout_ms = 5000;
  uint32_t heartbeat_ms = 30000;
  uint32_t min_heartbeat_ms = 100;
  uint32_t max_pending_bytes = 8 * 1024 * 1024;  // outbound queue bound per connection
  // Messages a tenant's delivery lane keeps while it waits for one of its slow consumers.
  uint64_t max_backlog_bytes = 32 * 1024 * 1024;
  // Bytes queued for clients (outbound queues and delivery backlogs) on this node: per tenant, and
  // for every tenant together. Past either bound, new deliveries to the tenant's clients are refused.
  uint64_t max_tenant_queued_bytes = 256ull * 1024 * 1024;
  uint64_t max_queued_bytes = 1024ull * 1024 * 1024;
  // Failed HELLOs per remote address: a burst, then this many a second (0 turns the throttle off).
  uint32_t auth_failures_burst = 10;
  double auth_failures_per_sec = 1.0;
  uint32_t request_timeout_ms = 5000;
  uint32_t max_request_timeout_ms = 60000;
  uint32_t drain_timeout_ms = 10000;
  uint32_t goaway_delay_ms = 5000;
  std::string admin_token_sha256;
  bool debug_console = true;  // false: GET /debug answers 404
  BusConfig bus;
  std::vector<TenantConfig> tenants;
};

// A configuration error; what() names the key, e.g. "tenants[1].limits.max_payload: must be > 0".
struct ConfigError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

GatewayConfig load_config_file(const std::string& path);
GatewayConfig parse_config(const std::string& yaml_text);
// The embedded default: memory bus and a "demo" tenant whose token is kDevToken.
GatewayConfig dev_config();
inline constexpr const char* kDevToken = "dev-token";
inline constexpr const char* kDevAdminToken = "dev-admin-token";

// Hex SHA-256 of a token, for the tokens_sha256 lists.
std::string sha256_hex(std::string_view data);
Endpoint parse_endpoint(const std::string& text, const std::string& key);

}  // namespace busgate::gw
