#include "nats_errors.hpp"

namespace busgate::gw {

namespace {

// Reads a Go-quoted string ("...", with \" and \\ escapes) at the start of `s`, leaving `s` after
// it. False when `s` does not start with one.
bool take_quoted(std::string_view& s, std::string& out) {
  out.clear();
  if (s.empty() || s.front() != '"') return false;
  for (size_t i = 1; i < s.size(); ++i) {
    const char c = s[i];
    if (c == '"') {
      s.remove_prefix(i + 1);
      return true;
    }
    if (c == '\\' && i + 1 < s.size()) {
      const char e = s[++i];
      switch (e) {
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        default: out.push_back(e); break;  // \" \\ and what the gateway's subjects never hold
      }
      continue;
    }
    out.push_back(c);
  }
  return false;
}

bool starts_with_nocase(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size()) return false;
  for (size_t i = 0; i < prefix.size(); ++i)
    if ((s[i] | 0x20) != (prefix[i] | 0x20)) return false;
  return true;
}

}  // namespace

NatsServerError classify_nats_error(std::string_view text) {
  NatsServerError e;
  while (!text.empty() && text.front() == ' ') text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\r')) text.remove_suffix(1);
  if (text.size() >= 2 && text.front() == '\'' && text.back() == '\'') text = text.substr(1, text.size() - 2);
  constexpr std::string_view kSub = "Permissions Violation for Subscription to ";
  constexpr std::string_view kPub = "Permissions Violation for Publish to ";
  constexpr std::string_view kReply = "Permissions Violation for Publish with Reply of ";
  if (starts_with_nocase(text, kSub)) {
    text.remove_prefix(kSub.size());
    if (!take_quoted(text, e.subject)) return NatsServerError{};
    constexpr std::string_view kQueue = " using queue ";
    if (starts_with_nocase(text, kQueue)) {
      text.remove_prefix(kQueue.size());
      if (!take_quoted(text, e.queue)) return NatsServerError{};
    }
    e.kind = NatsServerError::Kind::subscribe_denied;
    return e;
  }
  for (const std::string_view p : {kPub, kReply}) {
    if (!starts_with_nocase(text, p)) continue;
    text.remove_prefix(p.size());
    if (!take_quoted(text, e.subject)) return NatsServerError{};
    e.kind = NatsServerError::Kind::publish_denied;
    return e;
  }
  return e;
}

}  // namespace busgate::gw
