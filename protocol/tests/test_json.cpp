#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "busgate/protocol/codec.hpp"
#include "busgate/protocol/json.hpp"
#include "helpers.hpp"

using namespace busgate::proto;

TEST_CASE("JSON text frames become the same msgpack bodies", "[json]") {
  std::string body;
  REQUIRE(json_to_body(R"([3,"a.b","hi"])", body) == Code::ok);
  CHECK(to_hex(body) == "9303a3612e62c4026869");
  body.clear();
  REQUIRE(json_to_body(R"([3,"a.b",{"base64":"aGk="}])", body) == Code::ok);
  CHECK(to_hex(body) == "9303a3612e62c4026869");
}

TEST_CASE("non-UTF-8 payloads map to base64 objects", "[json]") {
  const std::string bytes("\xff\x00\x01", 3);
  Pub p;
  p.subject = "x";
  p.payload = bytes;
  std::string body;
  encode(p, body);
  auto text = body_to_json_text(body);
  REQUIRE(text);
  CHECK(*text == R"([3,"x",{"base64":"/wAB"}])");
  std::string back;
  REQUIRE(json_to_body(*text, back) == Code::ok);
  CHECK(back == body);
}

TEST_CASE("UTF-8 payloads map to strings, headers keep their order", "[json]") {
  Msg m;
  m.sid = 1;
  m.subject = "x";
  m.payload = "caf\xc3\xa9";
  m.headers = {{"z", "1"}, {"a", "2"}};
  std::string body;
  encode(m, body);
  CHECK(*body_to_json_text(body) == "[6,1,\"x\",\"caf\xc3\xa9\",{\"z\":\"1\",\"a\":\"2\"}]");
}

TEST_CASE("bad JSON frames are MALFORMED_FRAME with a reason", "[json]") {
  std::string body;
  std::string why;
  CHECK(json_to_body("not json", body, &why) == Code::malformed_frame);
  CHECK(json_to_body("{}", body, &why) == Code::malformed_frame);
  CHECK(json_to_body("[]", body, &why) == Code::malformed_frame);
  CHECK(json_to_body("[-1]", body, &why) == Code::malformed_frame);
  CHECK(json_to_body(R"([3,"a",{"base64":"!!"}])", body, &why) == Code::malformed_frame);
  CHECK(json_to_body(R"([3,"a",{"other":1}])", body, &why) == Code::malformed_frame);
  CHECK(json_to_body(std::string(10000, '['), body, &why) == Code::malformed_frame);
  CHECK(json_to_body(R"([3,"a","x",{"k":"1","k":"2"}])", body, &why) == Code::malformed_frame);
  CHECK(why.find("repeats") != std::string::npos);
  body.clear();
  CHECK(json_to_body(R"([3,"a","x",{"k":"1","j":{"k":"2"}}])", body, &why) == Code::ok);  // nesting is fine
  // a float where a uint is expected passes the mapping but not the decoder
  body.clear();
  REQUIRE(json_to_body(R"([4,1.5,"a"])", body) == Code::ok);
  Frame f;
  CHECK(decode(body, Origin::client, f).code == Code::malformed_frame);
}

TEST_CASE("base64 and UTF-8 helpers", "[json]") {
  CHECK(base64_encode("") == "");
  CHECK(base64_encode("f") == "Zg==");
  CHECK(base64_encode("fo") == "Zm8=");
  CHECK(base64_encode("foo") == "Zm9v");
  CHECK(*base64_decode("Zm9vYg==") == "foob");
  CHECK_FALSE(base64_decode("Zm9"));
  CHECK_FALSE(base64_decode("Zg=a"));
  CHECK(is_valid_utf8("plain"));
  CHECK(is_valid_utf8("\xe2\x82\xac"));
  CHECK_FALSE(is_valid_utf8("\xc0\xaf"));        // overlong
  CHECK_FALSE(is_valid_utf8("\xed\xa0\x80"));    // surrogate
  CHECK_FALSE(is_valid_utf8("\xe2\x82"));        // truncated
}
