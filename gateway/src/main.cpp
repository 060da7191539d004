// busgate: the gateway binary.
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <iostream>

#include "accept_backoff.hpp"
#include "config.hpp"
#include "config_check.hpp"
#include "logging.hpp"
#include "server.hpp"

using namespace busgate::gw;

int main(int argc, char** argv) {
  CLI::App app{"busgate: a multi-tenant gateway that relays the busgate protocol (TCP, WebSocket) to a message bus.\n"
               "With no --config it runs the embedded default: memory bus and a 'demo' tenant on localhost."};
  app.set_version_flag("--version", "busgate 0.1.0");
  std::string config_path, check_path, tcp, http, tls, https, tls_cert, tls_key, tls_client_ca, log_format, log_level,
      hash_token, nats_url, node_id;
  bool dev = false;
  unsigned threads = 0;
  app.add_flag("--dev", dev, "Run the embedded default (memory bus, tenant 'demo', token 'dev-token') even if "
                             "--config is given nowhere; this is also what happens without --config");
  app.add_option("-c,--config", config_path, "Load the YAML configuration file (docs/configuration.md)");
  app.add_option("--check-config", check_path, "Validate a YAML configuration file and exit (0 = valid)");
  app.add_option("--tcp", tcp, "TCP listener HOST:PORT (port 0 picks a free port; 'off' disables)");
  app.add_option("--http", http, "HTTP listener HOST:PORT for /healthz, /readyz (port 0 picks a free port)");
  app.add_option("--tls", tls, "busgate-over-TLS listener HOST:PORT (needs --tls-cert and --tls-key)");
  app.add_option("--https", https, "HTTPS/WSS listener HOST:PORT (needs --tls-cert and --tls-key)");
  app.add_option("--tls-cert", tls_cert, "PEM certificate chain for --tls and --https");
  app.add_option("--tls-key", tls_key, "PEM private key for --tls and --https");
  app.add_option("--tls-client-ca", tls_client_ca, "PEM CA bundle: require client certificates signed by it (mTLS)");
  app.add_option("--nats", nats_url, "Use a NATS bus at this URL (overrides bus: in the config)");
  app.add_option("--node-id", node_id, "This node's id (overrides node_id: in the config; unique per node)");
  app.add_option("--threads", threads, "I/O threads (default: one per core)");
  app.add_option("--log-format", log_format, "Log format: text or json")->check(CLI::IsMember({"text", "json"}));
  app.add_option("--log-level", log_level, "Log level: trace, debug, info, warn, error, off");
  app.add_option("--hash-token", hash_token, "Print the SHA-256 digest of a token for tokens_sha256 and exit");
  CLI11_PARSE(app, argc, argv);

  if (!hash_token.empty()) {
    std::cout << sha256_hex(hash_token) << "\n";
    return 0;
  }
  if (!check_path.empty()) {
    try {
      const auto cfg = load_config_file(check_path);
      std::cout << check_path << ": valid (" << cfg.tenants.size() << " tenants, bus " << cfg.bus.kind << ")\n";
      return 0;
    } catch (const ConfigError& e) {
      std::cerr << check_path << ": " << e.what() << "\n";
      return 2;
    }
  }

  // Before any socket is open: one descriptor per connection (docs/operations.md, "File descriptors").
  const DescriptorLimit descriptors = raise_descriptor_limit();

  GatewayConfig cfg;
  try {
    cfg = config_path.empty() ? dev_config() : load_config_file(config_path);
    if (!tcp.empty()) cfg.tcp = tcp == "off" ? std::nullopt : std::optional(parse_endpoint(tcp, "--tcp"));
    if (!http.empty()) cfg.http = http == "off" ? std::nullopt : std::optional(parse_endpoint(http, "--http"));
    if (!tls_cert.empty()) cfg.tls_files.cert_file = tls_cert;
    if (!tls_key.empty()) cfg.tls_files.key_file = tls_key;
    if (!tls_client_ca.empty()) cfg.tls_files.client_ca_file = tls_client_ca;
    if (!tls.empty()) cfg.tls = tls == "off" ? std::nullopt : std::optional(parse_endpoint(tls, "--tls"));
    if (!https.empty()) cfg.https = https == "off" ? std::nullopt : std::optional(parse_endpoint(https, "--https"));
    if ((cfg.tls || cfg.https) && !cfg.tls_files.enabled())
      throw ConfigError("--tls/--https: need --tls-cert and --tls-key (or tls.cert_file and tls.key_file)");
    if (!nats_url.empty()) {
      cfg.bus.kind = "nats";
      cfg.bus.servers = {nats_url};
    }
    if (!node_id.empty()) {
      if (!valid_node_id(node_id))
        throw ConfigError("--node-id: must be 1 to 64 letters, digits, '-' and '_' (it is a token of bus subjects)");
      cfg.node_id = node_id;
    }
    if (threads) cfg.threads = threads;
    if (!log_format.empty()) cfg.log_format = log_format;
    if (!log_level.empty()) cfg.log_level = log_level;
  } catch (const ConfigError& e) {
    std::cerr << "busgate: configuration error: " << (config_path.empty() ? "" : config_path + ": ") << e.what()
              << "\n";
    return 2;
  }
  setup_logging(cfg.log_format, cfg.log_level);
  if (descriptors.failed) spdlog::warn("{}", descriptors.line);
  else spdlog::info("{}", descriptors.line);
  (void)dev;
  try {
    if (config_path.empty())
      spdlog::info("dev mode: {} bus, tenant 'demo', token '{}', admin token '{}'", cfg.bus.kind, kDevToken,
                   kDevAdminToken);
    Server server(cfg, config_path);
    return server.run();
  } catch (const std::exception& e) {
    spdlog::critical("busgate failed to start: {}", e.what());
    return 1;
  }
}
