#include <catch2/catch.hpp>

#include <random>

#include "busgate/protocol/codec.hpp"
#include "busgate/protocol/stream.hpp"
#include "helpers.hpp"

using namespace busgate::proto;

TEST_CASE("parser yields whole frames from arbitrary chunks", "[stream]") {
  std::string wire;
  for (int i = 0; i < 200; ++i) {
    Pub p;
    p.subject = "s";
    const std::string payload(static_cast<size_t>(i * 13 % 700), static_cast<char>('a' + i % 26));
    p.payload = payload;
    encode_framed(p, wire);
  }
  std::mt19937 rng(42);
  for (int round = 0; round < 20; ++round) {
    FrameParser parser(kDefaultMaxFrame);
    size_t pos = 0;
    int frames = 0;
    while (pos < wire.size()) {
      const size_t n = std::min<size_t>(wire.size() - pos, 1 + rng() % 97);
      parser.feed(std::string_view(wire).substr(pos, n));
      pos += n;
      std::string_view body;
      while (parser.next(body) == FrameParser::Status::frame) {
        Frame f;
        REQUIRE(decode(body, Origin::client, f).ok());
        CHECK(std::get<Pub>(f).payload.size() == static_cast<size_t>(frames * 13 % 700));
        ++frames;
      }
    }
    CHECK(frames == 200);
    CHECK(parser.buffered() == 0);
  }
}

TEST_CASE("an oversized length is rejected before its body is buffered", "[stream]") {
  FrameParser parser(1024);
  parser.feed(from_hex("7fffffff"));
  std::string_view body;
  CHECK(parser.next(body) == FrameParser::Status::error);
  CHECK(parser.error() == Code::frame_too_large);
  CHECK(parser.capacity() < 64);
  CHECK(parser.next(body) == FrameParser::Status::error);  // sticky
}

TEST_CASE("a zero length is malformed", "[stream]") {
  FrameParser parser(1024);
  parser.feed(from_hex("00000000"));
  std::string_view body;
  CHECK(parser.next(body) == FrameParser::Status::error);
  CHECK(parser.error() == Code::malformed_frame);
}

TEST_CASE("max frame boundary", "[stream]") {
  FrameParser parser(5);
  parser.feed(from_hex("00000005") + std::string(5, '\x90'));
  std::string_view body;
  CHECK(parser.next(body) == FrameParser::Status::frame);
  parser.feed(from_hex("00000006"));
  CHECK(parser.next(body) == FrameParser::Status::error);
}

TEST_CASE("memory stays bounded by one frame plus one read", "[stream]") {
  FrameParser parser(4096);
  std::string frame = from_hex("00000800") + std::string(0x800, '\x90');
  for (int i = 0; i < 1000; ++i) {
    char* p = parser.prepare(frame.size());
    std::copy(frame.begin(), frame.end(), p);
    parser.commit(frame.size());
    std::string_view body;
    REQUIRE(parser.next(body) == FrameParser::Status::frame);
  }
  CHECK(parser.capacity() <= 2 * frame.size());
}

TEST_CASE("sniffing the first bytes", "[stream]") {
  CHECK(sniff("") == Sniff::need_more);
  CHECK(sniff(std::string("\0", 1)) == Sniff::need_more);
  CHECK(sniff(std::string("\0\0", 2)) == Sniff::busgate);
  CHECK(sniff(std::string("\0\x01", 2)) == Sniff::foreign);  // > 65535 bytes before HELLO
  CHECK(sniff("GET / HTTP/1.1\r\n") == Sniff::http);
  CHECK(sniff("POST /x") == Sniff::http);
  CHECK(sniff(from_hex("160301")) == Sniff::tls);
  CHECK(sniff("\x7f") == Sniff::foreign);
  CHECK(sniff("G") == Sniff::need_more);
  CHECK(sniff("G1") == Sniff::foreign);
  CHECK(sniff("XY") == Sniff::foreign);
  CHECK(sniff("hello") == Sniff::foreign);
  CHECK(http_reply().substr(0, 24) == "HTTP/1.1 400 Bad Request");
  const auto hr = std::string(http_reply());
  const auto body_at = hr.find("\r\n\r\n") + 4;
  const auto cl = hr.find("Content-Length: ") + 16;
  CHECK(std::stoul(hr.substr(cl)) == hr.size() - body_at);
  CHECK(to_hex(tls_alert_reply()) == "15030100020228");
}
