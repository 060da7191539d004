#include "nats_parser.hpp"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <nlohmann/json.hpp>

namespace busgate::gw {

namespace {

bool is_blank(char c) { return c == ' ' || c == '\t'; }
bool ends_op(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

// `s` equals `upper` (an upper-case ASCII name) without regard to case.
bool same_op(std::string_view s, std::string_view upper) {
  if (s.size() != upper.size()) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
    if (c != upper[i]) return false;
  }
  return true;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_blank(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_blank(s.back())) s.remove_suffix(1);
  return s;
}

// Splits arguments on spaces and tabs; at most `max` of them (max + 1: too many).
size_t split_args(std::string_view line, std::string_view* out, size_t max) {
  size_t n = 0, i = 0;
  while (i < line.size()) {
    while (i < line.size() && is_blank(line[i])) ++i;
    if (i >= line.size()) break;
    size_t j = i;
    while (j < line.size() && !is_blank(line[j])) ++j;
    if (n == max) return max + 1;
    out[n++] = line.substr(i, j - i);
    i = j;
  }
  return n;
}

enum class SizeResult { ok, malformed, too_large };

// A size: decimal digits only, at most `limit`; never overflows whatever the number of digits.
SizeResult parse_size(std::string_view s, uint64_t limit, uint64_t& v) {
  if (s.empty()) return SizeResult::malformed;
  v = 0;
  bool large = false;
  for (char c : s) {
    if (c < '0' || c > '9') return SizeResult::malformed;
    const auto d = static_cast<uint64_t>(c - '0');
    if (large) continue;
    if (d > limit || v > (limit - d) / 10) large = true;  // v * 10 + d > limit
    else v = v * 10 + d;
  }
  return large ? SizeResult::too_large : SizeResult::ok;
}

// Up to 48 bytes of `s` for a log line, non-printable bytes as '?'.
std::string shown(std::string_view s) {
  std::string r(s.substr(0, 48));
  for (char& c : r)
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
  if (s.size() > 48) r += "...";
  return r;
}

}  // namespace

void NatsParser::set_max_payload(int64_t max_payload) {
  max_payload_ = max_payload > 0 ? std::min(static_cast<uint64_t>(max_payload), kMaxPayloadCap) : kMaxPayloadCap;
}

uint64_t NatsParser::max_msg_size(bool with_headers) const {
  return max_payload_ + (with_headers ? kServerHeaderSlack : 0);
}

NatsParse NatsParser::fail(std::string why) {
  error_ = std::move(why);
  return NatsParse::error;
}

NatsParse NatsParser::next(std::string_view in, NatsItem& out) {
  consumed_ = needed_ = 0;
  // The operation name: at most four characters, ended by a blank or the end of the line.
  size_t i = 0;
  while (i < in.size() && i <= 4 && !ends_op(in[i])) ++i;
  if (i > 4) return fail("unknown operation '" + shown(in.substr(0, i)) + "'");
  if (i == in.size()) return NatsParse::need_more;
  const std::string_view name = in.substr(0, i);
  NatsOp op;
  if (same_op(name, "MSG")) op = NatsOp::msg;
  else if (same_op(name, "HMSG")) op = NatsOp::hmsg;
  else if (same_op(name, "PING")) op = NatsOp::ping;
  else if (same_op(name, "PONG")) op = NatsOp::pong;
  else if (same_op(name, "+OK")) op = NatsOp::ok;
  else if (same_op(name, "-ERR")) op = NatsOp::err;
  else if (same_op(name, "INFO")) op = NatsOp::info;
  else if (name.empty()) return fail("a line without an operation");
  else return fail("unknown operation '" + shown(name) + "'");

  // The whole control line, within its bound. LF ends it; a CR before the LF is not part of it.
  const bool long_line = op == NatsOp::info || op == NatsOp::err;
  const size_t limit = long_line ? kMaxLongLine : kMaxMsgLine;
  const size_t scan = std::min(in.size(), limit + 2);
  const auto* nl = static_cast<const char*>(std::memchr(in.data(), '\n', scan));
  if (!nl) {
    if (in.size() >= limit + 2)
      return fail("a " + std::string(name) + " line longer than " + std::to_string(limit) + " bytes");
    return NatsParse::need_more;
  }
  const size_t line_len = static_cast<size_t>(nl - in.data()) + 1;
  std::string_view line = in.substr(0, line_len - 1);
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  if (line.size() > limit)
    return fail("a " + std::string(name) + " line longer than " + std::to_string(limit) + " bytes");
  const std::string_view args = line.substr(i);

  switch (op) {
    case NatsOp::msg:
    case NatsOp::hmsg:
      return parse_msg(in, args, line_len, op == NatsOp::hmsg, out);
    case NatsOp::ping:
    case NatsOp::pong:
    case NatsOp::ok:
      if (!trim(args).empty()) return fail("unexpected arguments after " + std::string(name) + ": " + shown(args));
      out = NatsItem{};
      out.op = op;
      break;
    case NatsOp::err:
      out = NatsItem{};
      out.op = op;
      out.text = trim(args);
      break;
    case NatsOp::info: {
      const std::string_view json = trim(args);
      if (json.empty()) return fail("INFO without its JSON object");
      if (json.front() != '{') return fail("malformed INFO: not a JSON object");
      bool valid = false;
      try {
        valid = nlohmann::json::accept(json);
      } catch (...) {
        valid = false;
      }
      if (!valid) return fail("malformed INFO: not valid JSON");
      out = NatsItem{};
      out.op = op;
      out.text = json;
      break;
    }
  }
  consumed_ = line_len;
  return NatsParse::item;
}

NatsParse NatsParser::parse_msg(std::string_view in, std::string_view args, size_t line_len, bool hmsg,
                                NatsItem& out) {
  const char* what = hmsg ? "HMSG" : "MSG";
  // MSG <subject> <sid> [reply] <size>; HMSG <subject> <sid> [reply] <header size> <total size>
  std::string_view a[5];
  const size_t min_args = hmsg ? 4 : 3;
  const size_t n = split_args(args, a, min_args + 1);
  if (n < min_args || n > min_args + 1)
    return fail("malformed " + std::string(what) + " line (" + std::to_string(n) + " arguments): " + shown(args));
  uint64_t sid = 0;
  {
    const auto [ptr, ec] = std::from_chars(a[1].data(), a[1].data() + a[1].size(), sid);
    if (ec != std::errc{} || ptr != a[1].data() + a[1].size())
      return fail("malformed " + std::string(what) + " line: the sid '" + shown(a[1]) + "' is not a number");
  }
  const uint64_t limit = max_msg_size(hmsg);
  uint64_t hdr = 0, total = 0;
  const auto size_arg = [&](std::string_view s, uint64_t& v, const char* which) -> bool {
    switch (parse_size(s, limit, v)) {
      case SizeResult::ok:
        return true;
      case SizeResult::malformed:
        fail("malformed " + std::string(what) + " line: the " + which + " '" + shown(s) + "' is not a size");
        return false;
      case SizeResult::too_large:
        fail(std::string(what) + " " + which + " " + shown(s) + " is above the largest accepted (" +
             std::to_string(limit) + " bytes)");
        return false;
    }
    return false;
  };
  if (hmsg && !size_arg(a[n - 2], hdr, "header size")) return NatsParse::error;
  if (!size_arg(a[n - 1], total, hmsg ? "total size" : "size")) return NatsParse::error;
  if (hdr > total)
    return fail("malformed HMSG line: the header size " + std::to_string(hdr) + " is above the total size " +
                std::to_string(total));
  // No overflow: total is at most 64 MiB + 64 KiB, the line at most 4 KiB.
  const size_t need = line_len + static_cast<size_t>(total) + 2;
  if (in.size() < need) {
    needed_ = need;
    return NatsParse::need_more;
  }
  const char* body = in.data() + line_len;
  if (body[total] != '\r' || body[total + 1] != '\n')
    return fail(std::string("no CRLF after the payload of a ") + what + " of " + std::to_string(total) + " bytes");
  out = NatsItem{};
  out.op = hmsg ? NatsOp::hmsg : NatsOp::msg;
  out.sid = sid;
  out.subject = a[0];
  if (n == min_args + 1) out.reply = a[2];
  out.headers = std::string_view(body, static_cast<size_t>(hdr));
  out.payload = std::string_view(body + hdr, static_cast<size_t>(total - hdr));
  consumed_ = need;
  return NatsParse::item;
}

}  // namespace busgate::gw
