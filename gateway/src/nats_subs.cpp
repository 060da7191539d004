#include "nats_subs.hpp"

#include <charconv>

namespace busgate::gw {

using namespace std::literals;

namespace {
void append_num(std::string& out, uint64_t v) {
  char buf[24];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, end);
}
}  // namespace

void nats_append_sub(std::string& out, std::string_view subject, std::string_view queue, uint64_t sid) {
  out.append("SUB "sv).append(subject).push_back(' ');
  if (!queue.empty()) out.append(queue).push_back(' ');
  append_num(out, sid);
  out.append("\r\n"sv);
}

void nats_append_unsub(std::string& out, uint64_t sid) {
  out.append("UNSUB "sv);
  append_num(out, sid);
  out.append("\r\n"sv);
}

void NatsSubscriptions::add(uint64_t sid, std::string_view subject, std::string_view queue) {
  subs_[sid] = {std::string(subject), std::string(queue)};
}

bool NatsSubscriptions::remove(uint64_t sid) { return subs_.erase(sid) > 0; }

std::string NatsSubscriptions::replay() const {
  std::string out;
  for (const auto& [sid, sq] : subs_) nats_append_sub(out, sq.first, sq.second, sid);
  return out;
}

std::vector<uint64_t> NatsSubscriptions::take_refused(std::string_view subject, std::string_view queue) {
  std::vector<uint64_t> sids;
  for (auto it = subs_.begin(); it != subs_.end();) {
    if (it->second.first == subject && it->second.second == queue) {
      sids.push_back(it->first);
      it = subs_.erase(it);
    } else {
      ++it;
    }
  }
  return sids;
}

}  // namespace busgate::gw
