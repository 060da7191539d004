#include <catch2/catch.hpp>

#include "config.hpp"

using namespace busgate::gw;

namespace {
std::string error_of(const std::string& yaml) {
  try {
    parse_config(yaml);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}
const std::string kTenant = "tenants:\n  - name: acme\n    tokens: [\"acme-secret-1\"]\n";
}  // namespace

TEST_CASE("a valid multi-tenant config", "[config]") {
  const auto c = parse_config(R"(
node_id: gw-1
listen: {tcp: "127.0.0.1:0", http: "off"}
timeouts: {heartbeat_ms: 1000, request_ms: 200}
tenants:
  - name: acme
    tokens_sha256: [")" + sha256_hex("acme-secret-1") + R"("]
    permissions:
      publish: {allow: ["orders.>"], deny: ["orders.secret.>"]}
      subscribe: [">"]
    imports:
      - {kind: service, from: "data.>", to: "svc.data.>"}
    limits: {max_connections: 5, publish_msgs_per_sec: 100, max_inflight_requests: 15}
  - name: beta
    tokens: ["beta-secret-1"]
)");
  CHECK(c.node_id == "gw-1");
  CHECK(c.tcp->port == 0);
  CHECK_FALSE(c.http);
  REQUIRE(c.tenants.size() == 2);
  CHECK(c.tenants[0].prefix == "t.acme.");
  CHECK(c.tenants[0].limits.max_inflight_requests == 15);
  CHECK(c.tenants[1].token_sha256[0] == sha256_hex("beta-secret-1"));
}

TEST_CASE("config errors name the key", "[config]") {
  CHECK(error_of("") .find("empty") != std::string::npos);
  CHECK(error_of("bogus: 1\n" + kTenant).starts_with("bogus: unknown key"));
  CHECK(error_of("tenants: []").starts_with("tenants: at least one tenant"));
  CHECK(error_of("tenants:\n  - name: acme\n").starts_with("tenants[0].tokens_sha256"));
  CHECK(error_of("tenants:\n  - name: acme\n    tokens_sha256: [abc]\n").starts_with("tenants[0].tokens_sha256[0]"));
  CHECK(error_of(kTenant + "    limits: {max_payload: 0}\n").starts_with("tenants[0].limits.max_payload"));
  CHECK(error_of(kTenant + "    limits: {max_payload: lots}\n").find("must be a number") != std::string::npos);
  CHECK(error_of(kTenant + "    permissions: {publish: [\"a..b\"]}\n")
            .starts_with("tenants[0].permissions.publish.allow[0]"));
  CHECK(error_of(kTenant + "    imports: [{from: \"a.*.b\", to: \"x.>\"}]\n").starts_with("tenants[0].imports[0].from"));
  CHECK(error_of("listen: {tcp: \"nohost\"}\n" + kTenant).starts_with("listen.tcp"));
  CHECK(error_of("bus: {kind: nats}\n" + kTenant).starts_with("bus.servers"));
  CHECK(error_of("bus: {kind: kafka}\n" + kTenant).starts_with("bus.kind"));
  CHECK(error_of(kTenant + "  - name: acme\n    tokens: [\"other-secret\"]\n").starts_with("tenants[1].name"));
  CHECK(error_of("tenants: [\n").find("YAML") != std::string::npos);
  CHECK(error_of("timeouts: {heartbeat_ms: 50}\n" + kTenant).starts_with("timeouts.min_heartbeat_ms"));
}

TEST_CASE("dev config", "[config]") {
  const auto c = dev_config();
  REQUIRE(c.tenants.size() == 1);
  CHECK(c.tenants[0].name == "demo");
  CHECK(c.tenants[0].token_sha256[0] == sha256_hex(kDevToken));
  CHECK(c.tcp->port == 7422);
  CHECK(c.http->port == 7480);
}
