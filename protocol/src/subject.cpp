#include "busgate/protocol/subject.hpp"

namespace busgate::proto {
namespace {

bool bad_byte(char c) {
  const auto u = static_cast<unsigned char>(c);
  return u <= 0x20 || u == 0x7f;
}

// Calls f(token, is_last) for every '.'-separated token; stops when f returns false.
template <typename F>
bool for_each_token(std::string_view s, F&& f) {
  size_t start = 0;
  while (true) {
    const size_t dot = s.find('.', start);
    const bool last = dot == std::string_view::npos;
    const std::string_view tok = s.substr(start, last ? std::string_view::npos : dot - start);
    if (!f(tok, last)) return false;
    if (last) return true;
    start = dot + 1;
  }
}

}  // namespace

Code validate_subject(std::string_view subject, bool allow_wildcards) {
  if (subject.empty() || subject.size() > kMaxSubjectLength) return Code::invalid_subject;
  bool wildcard = false;
  const bool ok = for_each_token(subject, [&](std::string_view tok, bool last) {
    if (tok.empty()) return false;
    if (tok == "*") {
      wildcard = true;
      return true;
    }
    if (tok == ">") {
      wildcard = true;
      return last;
    }
    for (char c : tok)
      if (bad_byte(c) || c == '*' || c == '>') return false;
    return true;
  });
  if (!ok) return Code::invalid_subject;
  if (wildcard && !allow_wildcards) return Code::wildcard_not_allowed;
  return Code::ok;
}

bool has_wildcard(std::string_view subject) {
  bool wildcard = false;
  for_each_token(subject, [&](std::string_view tok, bool) {
    wildcard = wildcard || tok == "*" || tok == ">";
    return !wildcard;
  });
  return wildcard;
}

bool is_reserved_subject(std::string_view subject) { return !subject.empty() && subject.front() == '$'; }

Code validate_queue(std::string_view queue) {
  if (queue.empty() || queue.size() > kMaxQueueLength) return Code::invalid_queue;
  for (char c : queue)
    if (bad_byte(c) || c == '.' || c == '*' || c == '>') return Code::invalid_queue;
  return Code::ok;
}

bool is_reserved_header(std::string_view key) {
  if (key.size() < kReservedHeaderPrefix.size()) return false;
  for (size_t i = 0; i < kReservedHeaderPrefix.size(); ++i) {
    char c = key[i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    if (c != kReservedHeaderPrefix[i]) return false;
  }
  return true;
}

Code validate_header(std::string_view key, std::string_view value) {
  if (is_reserved_header(key)) return Code::reserved_header;
  if (key.empty() || key.size() > kMaxHeaderKeyLength || value.size() > kMaxHeaderValueLength)
    return Code::invalid_header;
  for (char c : key) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
                    c == '_' || c == '.';
    if (!ok) return Code::invalid_header;
  }
  for (char c : value)
    if (c == '\r' || c == '\n') return Code::invalid_header;
  return Code::ok;
}

std::vector<std::string_view> subject_tokens(std::string_view s) {
  std::vector<std::string_view> out;
  for_each_token(s, [&](std::string_view tok, bool) {
    out.push_back(tok);
    return true;
  });
  return out;
}

bool subject_matches(std::string_view pattern, std::string_view subject) {
  size_t p = 0;
  size_t s = 0;
  while (true) {
    const size_t pd = pattern.find('.', p);
    const std::string_view pt = pattern.substr(p, pd == std::string_view::npos ? std::string_view::npos : pd - p);
    if (pt == ">") return s < subject.size();  // one or more tokens remain
    const size_t sd = subject.find('.', s);
    const std::string_view st = subject.substr(s, sd == std::string_view::npos ? std::string_view::npos : sd - s);
    if (pt != "*" && pt != st) return false;
    const bool plast = pd == std::string_view::npos;
    const bool slast = sd == std::string_view::npos;
    if (plast || slast) return plast && slast;
    p = pd + 1;
    s = sd + 1;
  }
}

}  // namespace busgate::proto
