#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

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

TEST_CASE("debug_console is on by default and can be turned off", "[config]") {
  CHECK(parse_config(kTenant).debug_console);
  CHECK(dev_config().debug_console);
  CHECK_FALSE(parse_config("debug_console: false\n" + kTenant).debug_console);
  CHECK(parse_config("debug_console: true\n" + kTenant).debug_console);
  CHECK(error_of("debug_console: maybe\n" + kTenant).starts_with("debug_console: must be true or false"));
  CHECK(error_of("debug_console: [true]\n" + kTenant).starts_with("debug_console: must be true or false"));
}

namespace {
// A file in a fresh temporary folder, removed with it.
struct TempDir {
  std::filesystem::path dir;
  TempDir() {
    static int n = 0;
    dir = std::filesystem::temp_directory_path() /
          ("busgate-secret-test-" + std::to_string(getpid()) + "-" + std::to_string(n++));
    std::filesystem::create_directories(dir);
  }
  ~TempDir() { std::filesystem::remove_all(dir); }
  std::string file(const std::string& name, const std::string& content) const {
    const auto p = dir / name;
    std::ofstream(p, std::ios::binary) << content;
    return p.string();
  }
};
// An environment variable set for one scope.
struct EnvVar {
  std::string name;
  EnvVar(std::string n, const std::string& value) : name(std::move(n)) { setenv(name.c_str(), value.c_str(), 1); }
  ~EnvVar() { unsetenv(name.c_str()); }
};
std::string tenant_with(const std::string& tokens_yaml) {
  return "tenants:\n  - name: acme\n    tokens: " + tokens_yaml + "\n";
}
}  // namespace

TEST_CASE("secrets: a tenant token from a file, with trailing whitespace stripped", "[config][secret]") {
  TempDir tmp;
  const auto path = tmp.file("acme", "acme-file-token-1 \n\n");
  const auto c = parse_config(tenant_with("[{file: " + path + "}, plain-token-2]"));
  REQUIRE(c.tenants[0].token_sha256.size() == 2);
  CHECK(c.tenants[0].token_sha256[0] == sha256_hex("acme-file-token-1"));
  CHECK(c.tenants[0].token_sha256[1] == sha256_hex("plain-token-2"));
}

TEST_CASE("secrets: a token file of several lines is one token per non-empty line", "[config][secret]") {
  TempDir tmp;
  const auto path = tmp.file("acme", "acme-old-token-1\r\n\n  \nacme-new-token-2\n");
  // The file alone, not in a list, is the tenant's whole token set.
  const auto c = parse_config(tenant_with("{file: " + path + "}"));
  REQUIRE(c.tenants[0].token_sha256.size() == 2);
  CHECK(c.tenants[0].token_sha256[0] == sha256_hex("acme-old-token-1"));
  CHECK(c.tenants[0].token_sha256[1] == sha256_hex("acme-new-token-2"));
  // Loading again reads the file again: a rotated set replaces the old one.
  tmp.file("acme", "acme-new-token-2\nacme-next-token-3\n");
  const auto d = parse_config(tenant_with("{file: " + path + "}"));
  REQUIRE(d.tenants[0].token_sha256.size() == 2);
  CHECK(d.tenants[0].token_sha256[0] == sha256_hex("acme-new-token-2"));
  CHECK(d.tenants[0].token_sha256[1] == sha256_hex("acme-next-token-3"));
}

TEST_CASE("secrets: tokens_sha256 from a file and the environment", "[config][secret]") {
  TempDir tmp;
  std::string upper = sha256_hex("acme-digest-token-1");
  for (auto& ch : upper) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  const auto path = tmp.file("digests", upper + "\n" + sha256_hex("acme-digest-token-2") + "\n");
  EnvVar env("BUSGATE_TEST_DIGEST", sha256_hex("acme-digest-token-3"));
  const auto c = parse_config("tenants:\n  - name: acme\n    tokens_sha256: [{file: " + path +
                              "}, {env: BUSGATE_TEST_DIGEST}]\n");
  REQUIRE(c.tenants[0].token_sha256.size() == 3);
  CHECK(c.tenants[0].token_sha256[0] == sha256_hex("acme-digest-token-1"));
  CHECK(c.tenants[0].token_sha256[1] == sha256_hex("acme-digest-token-2"));
  CHECK(c.tenants[0].token_sha256[2] == sha256_hex("acme-digest-token-3"));
}

TEST_CASE("secrets: admin and bus credentials from files and the environment", "[config][secret]") {
  TempDir tmp;
  EnvVar admin("BUSGATE_TEST_ADMIN_TOKEN", "admin-env-token\n");
  EnvVar user("BUSGATE_TEST_BUS_USER", "gateway");
  const auto password = tmp.file("password", "s3cret pass\n");
  const auto token = tmp.file("token", "nats-token");
  const auto c = parse_config("admin: {token: {env: BUSGATE_TEST_ADMIN_TOKEN}}\n"
                              "bus: {kind: nats, servers: [\"nats://127.0.0.1:4222\"], user: {env: BUSGATE_TEST_BUS_USER},"
                              " password: {file: " + password + "}, token: {file: " + token + "}}\n" + kTenant);
  CHECK(c.admin_token_sha256 == sha256_hex("admin-env-token"));
  CHECK(c.bus.user == "gateway");
  CHECK(c.bus.password == "s3cret pass");  // inner spaces stay; only trailing whitespace goes
  CHECK(c.bus.token == "nats-token");
  EnvVar digest("BUSGATE_TEST_ADMIN_DIGEST", sha256_hex("admin-digest-token"));
  CHECK(parse_config("admin: {token_sha256: {env: BUSGATE_TEST_ADMIN_DIGEST}}\n" + kTenant).admin_token_sha256 ==
        sha256_hex("admin-digest-token"));
  // Plain strings are still plain strings.
  CHECK(parse_config("admin: {token: plain-admin}\n" + kTenant).admin_token_sha256 == sha256_hex("plain-admin"));
}

TEST_CASE("secrets: errors name the key and the source, never the secret", "[config][secret]") {
  TempDir tmp;
  const std::string missing = (tmp.dir / "missing").string();
  CHECK(error_of(tenant_with("[plain-token-1, {file: " + missing + "}]")) ==
        "tenants[0].tokens[1]: file '" + missing + "' cannot be read: No such file or directory");
  CHECK(error_of(tenant_with("{file: " + tmp.dir.string() + "}")) ==
        "tenants[0].tokens: file '" + tmp.dir.string() + "' cannot be read: Is a directory");
  unsetenv("BUSGATE_TEST_UNSET");
  CHECK(error_of("admin: {token: {env: BUSGATE_TEST_UNSET}}\n" + kTenant) ==
        "admin.token: environment variable BUSGATE_TEST_UNSET is not set");
  EnvVar blank("BUSGATE_TEST_BLANK", " \n");
  CHECK(error_of("bus: {password: {env: BUSGATE_TEST_BLANK}}\n" + kTenant) ==
        "bus.password: environment variable BUSGATE_TEST_BLANK is empty");
  const auto empty = tmp.file("empty", "\n\n");
  CHECK(error_of("bus: {user: {file: " + empty + "}}\n" + kTenant) == "bus.user: file '" + empty + "' is empty");
  CHECK(error_of(tenant_with("[{file: " + empty + "}]")) == "tenants[0].tokens[0]: file '" + empty + "' is empty");

  // A value that fails a later check: the key, the file and the line, not the value.
  const auto tokens = tmp.file("tokens", "acme-good-token-1\nshort\n");
  const auto err = error_of(tenant_with("[{file: " + tokens + "}]"));
  CHECK(err == "tenants[0].tokens[0]: file '" + tokens + "' line 2: tokens must be at least 8 characters");
  CHECK(err.find("short") == std::string::npos);
  EnvVar bad_digest("BUSGATE_TEST_BAD_DIGEST", "not-a-digest-secret");
  const auto err2 = error_of("admin: {token_sha256: {env: BUSGATE_TEST_BAD_DIGEST}}\n" + kTenant);
  CHECK(err2 == "admin.token_sha256: environment variable BUSGATE_TEST_BAD_DIGEST: must be a 64-hex-digit SHA-256 digest");
  CHECK(err2.find("not-a-digest-secret") == std::string::npos);
  const auto two = tmp.file("two", "admin-token-one\nadmin-token-two\n");
  const auto err3 = error_of("admin: {token: {file: " + two + "}}\n" + kTenant);
  CHECK(err3 == "admin.token: file '" + two + "' holds several lines; this key takes one value");
  CHECK(err3.find("admin-token-one") == std::string::npos);

  CHECK(error_of("admin: {token: \"\"}\n" + kTenant) ==
        "admin.token: must not be empty (leave admin out to disable the admin API)");

  // Malformed forms.
  CHECK(error_of("admin: {token: {path: /x}}\n" + kTenant) ==
        "admin.token: must be a string, {file: PATH} or {env: NAME}");
  CHECK(error_of("admin: {token: {braced-admin-secret}}\n" + kTenant) ==
        "admin.token: must be a string, {file: PATH} or {env: NAME}");
  CHECK(error_of("admin: {token: {file: /x, env: X}}\n" + kTenant) ==
        "admin.token: must be a string, {file: PATH} or {env: NAME}");
  CHECK(error_of("admin: {token: [a, b]}\n" + kTenant) == "admin.token: must be a string, {file: PATH} or {env: NAME}");
  CHECK(error_of("bus: {token: {file: \"\"}}\n" + kTenant) == "bus.token: {file: ...} needs a path");
  CHECK(error_of("bus: {token: {env: [X]}}\n" + kTenant) == "bus.token: {env: ...} needs a variable name");
  CHECK(error_of(tenant_with("[[nested-token-1]]")) == "tenants[0].tokens[0]: must be a string, {file: PATH} or {env: NAME}");
}
