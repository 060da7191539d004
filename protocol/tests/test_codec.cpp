#include <catch2/catch.hpp>

#include "busgate/protocol/codec.hpp"
#include "helpers.hpp"

using namespace busgate::proto;

namespace {
// The decoded frame holds views into `body`, so the caller owns the buffer and keeps it alive while
// it reads the frame.
Frame roundtrip(const Frame& f, Origin from, std::string& body) {
  body.clear();
  encode(f, body);
  Frame out;
  auto r = decode(body, from, out);
  INFO(r.detail);
  REQUIRE(r.ok());
  std::string again;
  encode(out, again);
  CHECK(to_hex(again) == to_hex(body));
  return out;
}
}  // namespace

TEST_CASE("PUB encodes compactly and round-trips", "[codec]") {
  std::string buf;
  Pub p;
  p.subject = "a.b";
  p.payload = "hi";
  std::string body;
  encode(p, body);
  CHECK(to_hex(body) == "9303a3612e62c4026869");
  auto out = std::get<Pub>(roundtrip(p, Origin::client, buf));
  CHECK(out.subject == "a.b");
  CHECK(out.payload == "hi");
  CHECK(out.headers.empty());
  CHECK_FALSE(out.reply_to);

  p.ack = 7;  // absent fields before a present one are nil
  body.clear();
  encode(p, body);
  CHECK(to_hex(body) == "9603a3612e62c4026869c0c007");
  roundtrip(p, Origin::client, buf);
}

TEST_CASE("decoded payloads point into the input buffer", "[codec]") {
  Pub p;
  p.subject = "x";
  p.payload = "payload-bytes";
  std::string body;
  encode(p, body);
  Frame f;
  REQUIRE(decode(body, Origin::client, f).ok());
  const auto& out = std::get<Pub>(f);
  CHECK(out.payload.data() >= body.data());
  CHECK(out.payload.data() + out.payload.size() <= body.data() + body.size());
}

TEST_CASE("every op round-trips with optional fields present", "[codec]") {
  std::string buf;
  Hello h;
  h.versions = {1, 2};
  h.auth.type = mp::Type::map;
  mp::Value tok;
  tok.type = mp::Type::str;
  tok.s = "token";
  h.auth.map.push_back({"method", tok});
  h.name = "svc";
  roundtrip(h, Origin::client, buf);

  Welcome w;
  w.session_id = "s1";
  w.node_id = "n1";
  w.tenant = "demo";
  w.limits.type = mp::Type::map;
  roundtrip(w, Origin::gateway, buf);

  const std::string big(300, 'x');
  Msg m;
  m.sid = 70000;
  m.subject = "a";
  m.payload = big;
  m.headers = {{"busgate-tenant", "demo"}, {"k", "v"}};
  m.reply_to = "_INBOX.x";
  m.delivery_id = 1ULL << 40;
  auto mo = std::get<Msg>(roundtrip(m, Origin::gateway, buf));
  CHECK(mo.headers.size() == 2);
  CHECK(mo.delivery_id == (1ULL << 40));

  Req q{5, "svc.x", "q", {{"a", "b"}}, 1500};
  roundtrip(q, Origin::client, buf);
  Res r{5, 0, "answer", {}};
  roundtrip(r, Origin::gateway, buf);
  roundtrip(Ok{4, 9}, Origin::gateway, buf);
  roundtrip(Err{306, "denied", 3, 0}, Origin::gateway, buf);
  roundtrip(Ping{}, Origin::client, buf);
  roundtrip(Pong{}, Origin::gateway, buf);
  Goaway g{2000, "restart", {"busgate://b:7422"}};
  roundtrip(g, Origin::gateway, buf);
  roundtrip(Sub{1, "a.>", "q", {}}, Origin::client, buf);
  roundtrip(Unsub{1, 10}, Origin::client, buf);
  roundtrip(Ack{1, 2}, Origin::client, buf);
  roundtrip(Nak{1, 2, 50}, Origin::client, buf);
  roundtrip(Credit{1, 100}, Origin::client, buf);
}

TEST_CASE("structural errors", "[codec]") {
  Frame f;
  CHECK(decode("", Origin::client, f).code == Code::malformed_frame);
  CHECK(decode(from_hex("c1"), Origin::client, f).code == Code::malformed_frame);
  CHECK(decode(from_hex("90"), Origin::client, f).code == Code::malformed_frame);
  CHECK(decode(from_hex("81a16101"), Origin::client, f).code == Code::malformed_frame);
  // op 99 is unknown, not malformed: the peer may speak a newer minor version
  auto r = decode(from_hex("9263c0"), Origin::client, f);
  CHECK(r.code == Code::unknown_op);
  CHECK(r.op == 99);
  // MSG from a client is in the wrong direction
  CHECK(decode(from_hex("940601a161c400"), Origin::client, f).code == Code::unexpected_op);
  // an unknown op whose body is not well-formed is MALFORMED_FRAME (the body is checked first)
  CHECK(decode(from_hex("9263c1"), Origin::client, f).code == Code::malformed_frame);
  CHECK(decode(from_hex("9263d40001"), Origin::client, f).code == Code::malformed_frame);  // ext
  CHECK(decode(from_hex("926300ff"), Origin::client, f).code == Code::malformed_frame);    // trailing byte
  // payload as str instead of bin
  r = decode(from_hex("9303a161a26869"), Origin::client, f);
  CHECK(r.code == Code::malformed_frame);
  CHECK(r.detail.find("payload") != std::string::npos);
  // truncated: array claims 3 elements, only 2 present
  CHECK(decode(from_hex("9303a161"), Origin::client, f).code == Code::malformed_frame);
  // trailing bytes after the array
  CHECK(decode(from_hex("910bff"), Origin::client, f).code == Code::malformed_frame);
  // negative sid
  CHECK(decode(from_hex("9305ffa161"), Origin::client, f).code == Code::malformed_frame);
  // sid above uint32
  CHECK(decode(from_hex("9304cf0000000100000000a161"), Origin::client, f).code == Code::malformed_frame);
  // HELLO with an empty versions array
  CHECK(decode(from_hex("93019080"), Origin::client, f).code == Code::malformed_frame);
  // huge claimed array length with few bytes does not allocate
  CHECK(decode(from_hex("dd7fffffff03"), Origin::client, f).code == Code::malformed_frame);
}

TEST_CASE("unknown trailing fields are ignored", "[codec]") {
  Frame f;
  // PUB "a" "x" nil nil 0 "future"
  auto r = decode(from_hex("9703a161c40178c0c000a6667574757265"), Origin::client, f);
  REQUIRE(r.ok());
  CHECK(std::get<Pub>(f).ack == 0);
}

TEST_CASE("client rules", "[codec]") {
  Frame f;
  Pub p;
  p.subject = "a.*";
  p.payload = "";
  p.ack = 3;
  std::string body;
  encode(p, body);
  auto r = decode(body, Origin::client, f);
  CHECK(r.code == Code::wildcard_not_allowed);
  CHECK(r.has_frame);
  CHECK(std::get<Pub>(f).ack == 3);  // the session can still answer with ref_id = ack

  p.subject = "$SYS.x";
  body.clear();
  encode(p, body);
  CHECK(decode(body, Origin::client, f).code == Code::reserved_subject);
  CHECK(decode(body, Origin::gateway, f).code == Code::unexpected_op);

  p.subject = "ok";
  p.headers = {{"Busgate-Tenant", "evil"}};
  body.clear();
  encode(p, body);
  CHECK(decode(body, Origin::client, f).code == Code::reserved_header);

  Msg m;
  m.subject = "ok";
  m.headers = {{"busgate-tenant", "demo"}};
  body.clear();
  encode(m, body);
  CHECK(decode(body, Origin::gateway, f).ok());  // the gateway sets it

  Sub s{1, "a.>", "bad.queue", {}};
  body.clear();
  encode(s, body);
  r = decode(body, Origin::client, f);
  CHECK(r.code == Code::invalid_queue);
  CHECK(std::get<Sub>(f).sid == 1);

  Req q{9, "a.>", "", {}, 0};
  body.clear();
  encode(q, body);
  r = decode(body, Origin::client, f);
  CHECK(r.code == Code::wildcard_not_allowed);
  CHECK(std::get<Req>(f).req_id == 9);
}

TEST_CASE("hot-path encoders match the generic encoder", "[codec]") {
  Headers h{{"busgate-tenant", "demo"}};
  std::string hm;
  encode_headers(hm, h);
  std::string fast;
  encode_msg_framed(fast, 3, "a.b", "data", hm, "_INBOX.1");
  Msg m;
  m.sid = 3;
  m.subject = "a.b";
  m.payload = "data";
  m.headers = h;
  m.reply_to = "_INBOX.1";
  std::string slow;
  encode_framed(m, slow);
  CHECK(to_hex(fast) == to_hex(slow));

  fast.clear();
  slow.clear();
  encode_msg_framed(fast, 3, "a.b", "data", "", "");
  m.headers.clear();
  m.reply_to.reset();
  encode_framed(m, slow);
  CHECK(to_hex(fast) == to_hex(slow));

  fast.clear();
  slow.clear();
  encode_res_framed(fast, 7, 500, "no responders", "");
  encode_framed(Res{7, 500, "no responders", {}}, slow);
  CHECK(to_hex(fast) == to_hex(slow));

  fast.clear();
  slow.clear();
  encode_err_framed(fast, Code::permission_denied, "no", 4, 2);
  encode_framed(Err{306, "no", 4, 2}, slow);
  CHECK(to_hex(fast) == to_hex(slow));
}
