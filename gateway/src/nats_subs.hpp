#pragma once
// The link's subscriptions: what it has asked the server for (sid → subject, queue group), so that
// a new connection asks again, and the SUB and UNSUB lines that say it. Not thread-safe: the link
// guards it together with its write buffer, so that a SUB is either replayed or queued, never both
// and never neither.

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace busgate::gw {

void nats_append_sub(std::string& out, std::string_view subject, std::string_view queue, uint64_t sid);
void nats_append_unsub(std::string& out, uint64_t sid);

class NatsSubscriptions {
 public:
  void add(uint64_t sid, std::string_view subject, std::string_view queue);
  // False when `sid` was not there.
  bool remove(uint64_t sid);
  // Every subscription's SUB, in sid order.
  std::string replay() const;
  // The server refused the subscription to `subject` with `queue` (empty: none): every such sid,
  // removed (the server has no subscription for them, and a new connection does not ask again).
  std::vector<uint64_t> take_refused(std::string_view subject, std::string_view queue);
  size_t size() const { return subs_.size(); }

 private:
  std::map<uint64_t, std::pair<std::string, std::string>> subs_;
};

}  // namespace busgate::gw
