#include "log_text.hpp"

#include <algorithm>
#include <cstdint>

namespace busgate::gw {

namespace {

constexpr std::string_view kEllipsis = "\xe2\x80\xa6";  // U+2026

// The length of the valid UTF-8 sequence starting at s[i] (2 to 4), with its code point; 0 when the
// byte at i does not start one.
size_t utf8_sequence(std::string_view s, size_t i, uint32_t& cp) {
  const auto at = [&](size_t j) { return static_cast<uint8_t>(s[j]); };
  const uint8_t b = at(i);
  size_t n;
  uint8_t lo = 0x80, hi = 0xbf;  // the allowed range of the second byte
  if (b >= 0xc2 && b <= 0xdf) {
    n = 2;
    cp = b & 0x1f;
  } else if (b >= 0xe0 && b <= 0xef) {
    n = 3;
    cp = b & 0x0f;
    if (b == 0xe0) lo = 0xa0;  // no overlong forms
    if (b == 0xed) hi = 0x9f;  // no surrogates
  } else if (b >= 0xf0 && b <= 0xf4) {
    n = 4;
    cp = b & 0x07;
    if (b == 0xf0) lo = 0x90;  // no overlong forms
    if (b == 0xf4) hi = 0x8f;  // nothing above U+10FFFF
  } else {
    return 0;
  }
  if (s.size() - i < n) return 0;
  for (size_t j = 1; j < n; ++j) {
    const uint8_t c = at(i + j);
    if (j == 1 ? (c < lo || c > hi) : (c < 0x80 || c > 0xbf)) return 0;
    cp = (cp << 6) | (c & 0x3f);
  }
  return n;
}

// Valid characters that terminals or log viewers may still act on.
bool escaped_char(uint32_t cp) {
  return (cp >= 0x80 && cp <= 0x9f) || cp == 0x2028 || cp == 0x2029 || (cp >= 0x202a && cp <= 0x202e) ||
         (cp >= 0x2066 && cp <= 0x2069);
}

size_t hex_escape(uint8_t b, char* out) {
  static constexpr char kHex[] = "0123456789abcdef";
  out[0] = '\\';
  out[1] = 'x';
  out[2] = kHex[b >> 4];
  out[3] = kHex[b & 15];
  return 4;
}

}  // namespace

std::string log_text(std::string_view s, size_t max) {
  std::string out;
  out.reserve(std::min(max, s.size() + 8));
  const size_t room = max >= kEllipsis.size() ? max - kEllipsis.size() : max;  // before an ellipsis
  size_t boundary = 0;  // the end of the last whole unit within `room`
  char unit[16];        // one escape, one character, or one escaped character
  for (size_t i = 0; i < s.size();) {
    const auto b = static_cast<uint8_t>(s[i]);
    size_t len = 0, used = 1;
    if (b < 0x80) {
      switch (b) {
        case '\n': unit[0] = '\\', unit[1] = 'n', len = 2; break;
        case '\r': unit[0] = '\\', unit[1] = 'r', len = 2; break;
        case '\t': unit[0] = '\\', unit[1] = 't', len = 2; break;
        case '\\': unit[0] = '\\', unit[1] = '\\', len = 2; break;
        case '"': unit[0] = '\\', unit[1] = '"', len = 2; break;
        default:
          if (b < 0x20 || b == 0x7f) {
            len = hex_escape(b, unit);
          } else {
            unit[0] = static_cast<char>(b);
            len = 1;
          }
      }
    } else {
      uint32_t cp = 0;
      const size_t n = utf8_sequence(s, i, cp);
      if (n == 0) {
        len = hex_escape(b, unit);  // not UTF-8: this byte alone; decoding resumes at the next
      } else {
        used = n;
        for (size_t j = 0; j < n; ++j) {
          if (escaped_char(cp)) {
            len += hex_escape(static_cast<uint8_t>(s[i + j]), unit + len);
          } else {
            unit[len++] = s[i + j];
          }
        }
      }
    }
    if (out.size() + len > max) {  // it does not fit: cut
      if (max >= kEllipsis.size()) {
        out.resize(boundary);
        out.append(kEllipsis);
      }
      return out;
    }
    out.append(unit, len);
    if (out.size() <= room) boundary = out.size();
    i += used;
  }
  return out;
}

}  // namespace busgate::gw
