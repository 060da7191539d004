#include <catch2/catch.hpp>

#include <cstdint>
#include <random>
#include <string>

#include "log_text.hpp"

using namespace busgate::gw;

namespace {

// Undoes log_text's escapes (the text must not have been cut).
std::string unescape(const std::string& t) {
  std::string out;
  for (size_t i = 0; i < t.size(); ++i) {
    if (t[i] != '\\') {
      out += t[i];
      continue;
    }
    REQUIRE(i + 1 < t.size());
    const char c = t[++i];
    if (c == 'n') out += '\n';
    else if (c == 'r') out += '\r';
    else if (c == 't') out += '\t';
    else if (c == '\\' || c == '"') out += c;
    else {
      REQUIRE(c == 'x');
      REQUIRE(i + 2 < t.size());
      out += static_cast<char>(std::stoi(t.substr(i + 1, 2), nullptr, 16));
      i += 2;
    }
  }
  return out;
}

// Only printable ASCII and well-formed UTF-8 of U+00A0 and above: nothing a log reader acts on.
bool one_safe_line(const std::string& t) {
  for (size_t i = 0; i < t.size(); ++i) {
    const auto b = static_cast<uint8_t>(t[i]);
    if (b < 0x20 || b == 0x7f) return false;
    if (b < 0x80) continue;
    size_t n = b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : b >= 0xc2 ? 2 : 0;
    if (n == 0 || b > 0xf4 || i + n > t.size()) return false;
    for (size_t j = 1; j < n; ++j)
      if ((static_cast<uint8_t>(t[i + j]) & 0xc0) != 0x80) return false;
    if (b == 0xc2 && static_cast<uint8_t>(t[i + 1]) < 0xa0) return false;  // C1 controls
    if (b == 0xe2 && static_cast<uint8_t>(t[i + 1]) == 0x80 && static_cast<uint8_t>(t[i + 2]) >= 0xa8 &&
        static_cast<uint8_t>(t[i + 2]) <= 0xae)
      return false;  // U+2028, U+2029, U+202A-U+202E
    i += n - 1;
  }
  return true;
}

const std::string kEllipsis = "\xe2\x80\xa6";

}  // namespace

TEST_CASE("a forged log line stays on the line it was written into", "[log_text]") {
  const std::string forged = "x\n2026-01-01T00:00:00 info connection open session=forged";
  const std::string t = log_text(forged);
  CHECK(t == "x\\n2026-01-01T00:00:00 info connection open session=forged");
  CHECK(t.find('\n') == std::string::npos);
  CHECK(log_text("a\r\nb\x1b[2Jc\"d\\e\tf") == "a\\r\\nb\\x1b[2Jc\\\"d\\\\e\\tf");
  CHECK(log_text("scorer") == "scorer");
  CHECK(log_text("") == "");
}

TEST_CASE("every byte alone comes out as printable ASCII", "[log_text]") {
  static const char* kHex = "0123456789abcdef";
  for (int b = 0; b < 256; ++b) {
    INFO("byte " << b);
    const std::string in(1, static_cast<char>(b));
    const std::string t = log_text(in);
    std::string want;
    switch (b) {
      case '\n': want = "\\n"; break;
      case '\r': want = "\\r"; break;
      case '\t': want = "\\t"; break;
      case '\\': want = "\\\\"; break;
      case '"': want = "\\\""; break;
      default:
        if (b < 0x20 || b >= 0x7f) want = std::string("\\x") + kHex[b >> 4] + kHex[b & 15];
        else want = in;
    }
    CHECK(t == want);
    for (char c : t) CHECK((c >= 0x20 && c < 0x7f));
    CHECK(unescape(t) == in);
  }
}

TEST_CASE("valid UTF-8 is kept, and invalid sequences and invisible controls are escaped", "[log_text]") {
  CHECK(log_text("h\xc3\xa9llo \xe2\x82\xac \xf0\x9d\x84\x9e \xe4\xb8\xad") ==
        "h\xc3\xa9llo \xe2\x82\xac \xf0\x9d\x84\x9e \xe4\xb8\xad");
  CHECK(log_text("\xc0\xaf") == "\\xc0\\xaf");                // overlong '/'
  CHECK(log_text("\xe0\x80\xaf") == "\\xe0\\x80\\xaf");       // overlong, 3 bytes
  CHECK(log_text("\xed\xa0\x80") == "\\xed\\xa0\\x80");       // a surrogate
  CHECK(log_text("\xf4\x90\x80\x80") == "\\xf4\\x90\\x80\\x80");  // above U+10FFFF
  CHECK(log_text("\xe2\x82") == "\\xe2\\x82");                // cut short at the end
  CHECK(log_text("\xe2\x82x") == "\\xe2\\x82x");              // cut short before ASCII
  CHECK(log_text("\x80\xc3\xa9") == "\\x80\xc3\xa9");         // a stray continuation, then a character
  CHECK(log_text("a\xc2\x85" "b") == "a\\xc2\\x85b");         // U+0085, a C1 line break
  CHECK(log_text("a\xe2\x80\xa8" "b") == "a\\xe2\\x80\\xa8b");  // U+2028 line separator
  CHECK(log_text("a\xe2\x80\xae" "b") == "a\\xe2\\x80\\xaeb");  // U+202E right-to-left override
  CHECK(log_text("a\xe2\x81\xa6" "b") == "a\\xe2\\x81\\xa6b");  // U+2066 left-to-right isolate
  CHECK(log_text("\xc2\xa0") == "\xc2\xa0");                  // U+00A0 is printable
}

TEST_CASE("a long text is cut at a whole unit, with an ellipsis, within max", "[log_text]") {
  SECTION("fits exactly: no ellipsis") {
    CHECK(log_text(std::string(10, 'a'), 10) == std::string(10, 'a'));
    CHECK(log_text(std::string(256, 'a')) == std::string(256, 'a'));
  }
  SECTION("one byte too long") {
    CHECK(log_text(std::string(11, 'a'), 10) == std::string(7, 'a') + kEllipsis);
    CHECK(log_text(std::string(1000, 'a')) == std::string(253, 'a') + kEllipsis);
  }
  SECTION("never inside an escape") {
    // "ab" and five 2-byte escapes (12 bytes): 7 bytes of room before the ellipsis hold "ab" and two
    // escapes; an 8th byte would split the third.
    CHECK(log_text("ab\n\n\n\n\n", 10) == "ab\\n\\n" + kEllipsis);
    CHECK(log_text("a\x01\x02\x03", 10) == "a\\x01" + kEllipsis);
  }
  SECTION("never inside a UTF-8 sequence") {
    // U+00E9 is 2 bytes: 3 of them fill 6 of the 7 bytes of room.
    CHECK(log_text("\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9", 10) ==
          "\xc3\xa9\xc3\xa9\xc3\xa9" + kEllipsis);
    // An escaped character (12 bytes of escape) is one unit.
    CHECK(log_text("ab\xe2\x80\xa8", 10) == "ab" + kEllipsis);
  }
  SECTION("a tiny max") {
    CHECK(log_text("abcd", 3) == kEllipsis);
    CHECK(log_text("abc", 3) == "abc");
    CHECK(log_text("abc", 2) == "ab");
    CHECK(log_text("abc", 0) == "");
  }
}

TEST_CASE("random bytes: one safe line, within max, and reversible when not cut", "[log_text]") {
  std::mt19937 rng(20260101);
  std::uniform_int_distribution<int> byte(0, 255), len(0, 300), bias(0, 3);
  for (int round = 0; round < 3000; ++round) {
    std::string in(static_cast<size_t>(len(rng)), '\0');
    for (auto& c : in) {
      // Mostly ASCII and UTF-8 lead/continuation bytes, so valid sequences occur often.
      const int kind = bias(rng);
      const int v = kind == 0   ? byte(rng)
                    : kind == 1 ? 0x80 + byte(rng) % 64
                    : kind == 2 ? 0xc2 + byte(rng) % 51
                                : byte(rng) % 128;
      c = static_cast<char>(v);
    }
    const size_t max = round % 2 ? 256 : 64;
    const std::string t = log_text(in, max);
    INFO("round " << round);
    REQUIRE(t.size() <= max);
    REQUIRE(one_safe_line(t));
    if (t.size() >= kEllipsis.size() && t.compare(t.size() - 3, 3, kEllipsis) == 0 && unescape(t) != in) {
      // Cut: what is left is an escaped prefix of the input.
      const std::string prefix = unescape(t.substr(0, t.size() - 3));
      REQUIRE(in.compare(0, prefix.size(), prefix) == 0);
      REQUIRE(prefix.size() < in.size());
    } else {
      REQUIRE(unescape(t) == in);
    }
  }
}
