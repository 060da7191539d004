// The NATS link's pure units: the server pool (nats_servers.hpp) and the handshake
// (nats_handshake.hpp).
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "config.hpp"
#include "nats_auth.hpp"
#include "nats_handshake.hpp"
#include "nats_servers.hpp"

using namespace busgate::gw;

// ---------------------------------------------------------------- addresses and credentials

TEST_CASE("nats servers: addresses are parsed with scheme, credentials, host and port", "[nats_servers]") {
  auto u = parse_nats_url("nats://alice:s3cret@bus.example:4333");
  CHECK(u.host == "bus.example");
  CHECK(u.port == "4333");
  CHECK(u.user == "alice");
  CHECK(u.pass == "s3cret");
  CHECK_FALSE(u.tls);
  CHECK(u.text == "nats://alice:s3cret@bus.example:4333");

  u = parse_nats_url("tls://bus.example");
  CHECK(u.tls);
  CHECK(u.port == "4222");

  u = parse_nats_url("T0KEN@10.0.0.1:4222");
  CHECK(u.user == "T0KEN");
  CHECK(u.pass.empty());
  CHECK(u.host == "10.0.0.1");

  u = parse_nats_url("[::1]:4999");
  CHECK(u.host == "::1");
  CHECK(u.port == "4999");
  CHECK(parse_nats_url("[::1]").port == "4222");
  CHECK(parse_nats_url("nats://h:1/some/path").port == "1");

  for (const char* bad : {"http://h:4222", "h:0", "h:65536", "h:42x", ":4222", "nats://", "[::1:4222", "h:"})
    CHECK_THROWS_AS(parse_nats_url(bad), ConfigError);
}

TEST_CASE("nats servers: credentials in the URL take precedence, a configured token always goes", "[nats_servers]") {
  const auto plain = parse_nats_url("h:1");
  auto a = nats_user_auth(plain, "u", "p", "");
  CHECK((a.user == "u" && a.pass == "p" && a.token.empty()));
  a = nats_user_auth(plain, "u", "", "");  // a user without a password is not sent
  CHECK((a.user.empty() && a.token.empty()));
  a = nats_user_auth(parse_nats_url("x:y@h:1"), "u", "p", "");
  CHECK((a.user == "x" && a.pass == "y"));
  a = nats_user_auth(parse_nats_url("tok@h:1"), "u", "p", "");
  CHECK((a.user.empty() && a.token == "tok"));
  a = nats_user_auth(plain, "", "", "configured");
  CHECK(a.token == "configured");
  a = nats_user_auth(parse_nats_url("tok@h:1"), "", "", "configured");
  CHECK(a.token == "configured");
}

TEST_CASE("nats servers: the pool rotates through configured and announced servers", "[nats_servers]") {
  CHECK_THROWS_AS(NatsServerPool({}), ConfigError);
  CHECK_THROWS_AS(NatsServerPool({"h:1", "ftp://h:2"}), ConfigError);

  NatsServerPool pool({"nats://u:p@a:1", "b:2"});
  CHECK_FALSE(pool.any_tls());
  CHECK(pool.next().host == "a");
  CHECK(pool.next().host == "b");
  const NatsServerUrl via = pool.next();
  CHECK(via.host == "a");

  // Announced: known ones (by host and port) and unparsable ones are left out; new ones get the
  // announcing server's scheme and credentials.
  const auto added = pool.learn({"a:1", "c:3", "not a port:x", "b:2", "c:3", "d:4"}, via);
  CHECK(added == std::vector<std::string>{"nats://c:3", "nats://d:4"});
  REQUIRE(pool.servers().size() == 4);
  CHECK(pool.servers()[2].user == "u");
  CHECK(pool.servers()[2].pass == "p");
  std::vector<std::string> order;
  for (int i = 0; i < 4; ++i) order.push_back(pool.next().host);
  CHECK(order == std::vector<std::string>{"d", "a", "b", "c"});  // on from where the rotation was

  NatsServerPool tls({"tls://a:1"});
  CHECK(tls.any_tls());
  tls.learn({"e:5"}, tls.next());
  CHECK(tls.servers()[1].tls);
}

TEST_CASE("nats servers: refusals back off up to 5 s, unreachable servers do not", "[nats_servers]") {
  using std::chrono::milliseconds;
  CHECK(nats_reconnect_delay(0, 200) == milliseconds(200));
  CHECK(nats_reconnect_delay(1, 200) == milliseconds(200));
  CHECK(nats_reconnect_delay(2, 200) == milliseconds(400));
  CHECK(nats_reconnect_delay(3, 200) == milliseconds(800));
  CHECK(nats_reconnect_delay(50, 200) == milliseconds(5000));
  CHECK(nats_reconnect_delay(0, 0) == milliseconds(1));
  CHECK(nats_reconnect_delay(9, 7000) == milliseconds(7000));
}

// ---------------------------------------------------------------- INFO and the handshake

namespace {

NatsItem item(NatsOp op, std::string_view text = {}) {
  NatsItem m;
  m.op = op;
  m.text = text;
  return m;
}

nlohmann::json connect_json(const std::string& data) {
  REQUIRE(data.starts_with("CONNECT "));
  REQUIRE(data.ends_with("\r\nPING\r\n"));
  return nlohmann::json::parse(data.substr(8, data.size() - 8 - 8));
}

}  // namespace

TEST_CASE("nats handshake: INFO fields the link uses, anything else ignored", "[nats_handshake]") {
  auto info = parse_nats_info(
      R"({"max_payload":2048,"tls_required":true,"nonce":"abc","connect_urls":["h:1",7,"h:2"],"x":{}})");
  REQUIRE(info);
  CHECK(info->max_payload == 2048);
  CHECK(info->tls_required);
  CHECK(info->nonce == "abc");
  CHECK(info->connect_urls == std::vector<std::string>{"h:1", "h:2"});

  info = parse_nats_info(R"({"max_payload":"big","tls_required":1,"nonce":5,"connect_urls":"h:1"})");
  REQUIRE(info);
  CHECK(info->max_payload == 0);
  CHECK_FALSE(info->tls_required);
  CHECK(info->nonce.empty());
  CHECK(info->connect_urls.empty());
  CHECK(parse_nats_info(R"({"max_payload":-5})")->max_payload == 0);
  CHECK(parse_nats_info(R"({"max_payload":18446744073709551615})")->max_payload == INT64_MAX);

  std::string why;
  CHECK_FALSE(parse_nats_info("[1,2]", &why));
  CHECK(why == "not a JSON object");
  CHECK_FALSE(parse_nats_info("{not json", &why));
  CHECK(why == "not JSON");
}

// GCC 12 reports a false -Wmaybe-uninitialized inside std::string assignment here (as for GCC bug
// 105329, which the build already works around for -Wrestrict).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
TEST_CASE("nats handshake: INFO, CONNECT and PING, then PONG makes the connection ready", "[nats_handshake]") {
  NatsLinkOptions opt;
  opt.name = "node-1";
  opt.user = "gw";
  opt.password = "pw";
  NatsCreds creds;
  NatsHandshake hs(opt, creds, parse_nats_url("127.0.0.1:4222"));
  CHECK(hs.waiting_for().find("no INFO") != std::string::npos);
  CHECK(hs.protocol_error("x") == "the server did not start with INFO (not a NATS server?): x");

  auto step = hs.on_item(item(NatsOp::info, R"({"max_payload":4096,"connect_urls":["10.0.0.2:4222"]})"));
  REQUIRE(step.next == NatsHandshake::Next::send);
  REQUIRE(step.info);
  CHECK(step.info->max_payload == 4096);
  CHECK(step.info->connect_urls.size() == 1);
  const auto c = connect_json(step.data);
  CHECK(c["name"] == "node-1");
  CHECK(c["user"] == "gw");
  CHECK(c["pass"] == "pw");
  CHECK(c["headers"] == true);
  CHECK(c["no_responders"] == true);
  CHECK(c["verbose"] == false);
  CHECK(c["tls_required"] == false);
  CHECK_FALSE(c.contains("auth_token"));
  CHECK_FALSE(c.contains("sig"));
  CHECK(hs.waiting_for() == "no answer to CONNECT");
  CHECK(hs.protocol_error("x") == "protocol error from the server: x");
  CHECK(hs.read_error("eof").starts_with("the server closed the connection during the handshake"));

  CHECK(hs.on_item(item(NatsOp::ok)).next == NatsHandshake::Next::wait);
  step = hs.on_item(item(NatsOp::info, R"({"connect_urls":["10.0.0.3:4222"]})"));
  CHECK(step.next == NatsHandshake::Next::wait);
  REQUIRE(step.info);
  CHECK(hs.on_item(item(NatsOp::pong)).next == NatsHandshake::Next::ready);
}
#pragma GCC diagnostic pop

TEST_CASE("nats handshake: what ends an attempt, and why", "[nats_handshake]") {
  NatsLinkOptions opt;
  NatsCreds creds;
  {
    NatsHandshake hs(opt, creds, parse_nats_url("h:1"));
    const auto s = hs.on_item(item(NatsOp::ping));
    CHECK(s.next == NatsHandshake::Next::fail);
    CHECK(s.data == "the server did not start with INFO (not a NATS server?)");
    CHECK_FALSE(s.refused);
  }
  {
    NatsHandshake hs(opt, creds, parse_nats_url("h:1"));
    const auto s = hs.on_item(item(NatsOp::info, "[]"));
    CHECK(s.next == NatsHandshake::Next::fail);
    CHECK(s.data == "malformed INFO: not a JSON object");
  }
  {
    NatsHandshake hs(opt, creds, parse_nats_url("h:1"));
    REQUIRE(hs.on_item(item(NatsOp::info, "{}")).next == NatsHandshake::Next::send);
    const auto s = hs.on_item(item(NatsOp::err, "'Authorization Violation'"));
    CHECK(s.next == NatsHandshake::Next::fail);
    CHECK(s.refused);
    CHECK(s.data == "the server refused the connection: 'Authorization Violation'");
  }
}

TEST_CASE("nats handshake: TLS when the URL, the server or the configuration asks for it", "[nats_handshake]") {
  NatsCreds creds;
  NatsLinkOptions plain;
  {
    NatsHandshake hs(plain, creds, parse_nats_url("tls://h:1"));
    CHECK(hs.on_item(item(NatsOp::info, "{}")).next == NatsHandshake::Next::start_tls);
    CHECK(hs.waiting_for() == "no TLS handshake");
    const auto s = hs.tls_done();
    REQUIRE(s.next == NatsHandshake::Next::send);
    CHECK(connect_json(s.data)["tls_required"] == true);
    CHECK(hs.tls());
  }
  {
    NatsHandshake hs(plain, creds, parse_nats_url("h:1"));
    CHECK(hs.on_item(item(NatsOp::info, R"({"tls_required":true})")).next == NatsHandshake::Next::start_tls);
  }
  {
    NatsLinkOptions with_ca;
    with_ca.tls_ca = "/some/ca.pem";
    NatsHandshake hs(with_ca, creds, parse_nats_url("h:1"));
    CHECK(hs.on_item(item(NatsOp::info, "{}")).next == NatsHandshake::Next::start_tls);
  }
}

TEST_CASE("nats handshake: tokens, URL credentials and nkey signatures in CONNECT", "[nats_handshake]") {
  NatsLinkOptions opt;
  NatsCreds none;
  auto c = connect_json(nats_connect_message(opt, none, parse_nats_url("tok@h:1"), "", false));
  CHECK(c["auth_token"] == "tok");
  CHECK_FALSE(c.contains("user"));
  opt.token = "configured";
  c = connect_json(nats_connect_message(opt, none, parse_nats_url("h:1"), "", false));
  CHECK(c["auth_token"] == "configured");

  // A user seed alone: nkey authentication, the nonce signed with it.
  NatsCreds seed{"", "SUAMLK2ZNL35WSMW37E7UD4VZ7ELPKW7DHC3BWBSD2GCZ7IUQQXZIORRBU"};
  const std::string pub = nkey_public_key(seed.seed);
  CHECK(pub.starts_with("U"));
  c = connect_json(nats_connect_message(NatsLinkOptions{}, seed, parse_nats_url("h:1"), "nonce-1", false));
  CHECK(c["nkey"] == pub);
  CHECK(c["sig"] == nkey_sign(seed.seed, "nonce-1"));
  CHECK_FALSE(c.contains("jwt"));
  // Without a nonce there is nothing to sign.
  c = connect_json(nats_connect_message(NatsLinkOptions{}, seed, parse_nats_url("h:1"), "", false));
  CHECK_FALSE(c.contains("sig"));
  // With a JWT: the JWT instead of the public key.
  NatsCreds jwt{"eyJ.header.sig", seed.seed};
  c = connect_json(nats_connect_message(NatsLinkOptions{}, jwt, parse_nats_url("h:1"), "n", false));
  CHECK(c["jwt"] == "eyJ.header.sig");
  CHECK_FALSE(c.contains("nkey"));

  // A seed that cannot sign ends the attempt with the reason, it does not throw out of the machine.
  NatsCreds bad{"", "SUnotaseed"};
  const NatsLinkOptions defaults;
  NatsHandshake hs(defaults, bad, parse_nats_url("h:1"));
  const auto s = hs.on_item(item(NatsOp::info, R"({"nonce":"n"})"));
  CHECK(s.next == NatsHandshake::Next::fail);
  CHECK_FALSE(s.data.empty());
}
