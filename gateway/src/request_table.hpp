#pragma once
// The REQs one connection has in flight (docs/protocol.md section 12): req_id → the bus's request
// token and the deadline. One timer per connection serves every deadline; the table says when that
// timer must move (only for a deadline earlier than the armed one, so a steady stream of requests
// does not touch it) and which requests it expired. Not thread-safe (the connection's executor).

#include <atomic>
#include <chrono>
#include <memory>
#include <cstdint>
#include <unordered_map>
#include <utility>
#include <vector>

namespace busgate::gw {

class RequestTable {
 public:
  using Clock = std::chrono::steady_clock;
  struct Entry {
    uint64_t token = 0;  // the bus's request token
    Clock::time_point started;
    Clock::time_point deadline;
    uint64_t timeout_ms = 0;
    // Who answers the request: the first to claim it sends the one RES. A reply claims it on the
    // thread it arrived on (kReplied: that thread also gave back the tenant's in-flight slot); the
    // connection's thread claims it for a timeout, a shutdown or a failed request (kClosed).
    static constexpr int kPending = 0, kReplied = 1, kClosed = 2;
    std::shared_ptr<std::atomic<int>> claim;
    // The connection's thread: true when it claimed the request (the caller sends the RES and
    // gives back the slot); false when a reply did.
    bool claim_here() const {
      int expected = kPending;
      return claim->compare_exchange_strong(expected, kClosed);
    }
    bool replied() const { return claim->load() == kReplied; }
  };

  bool contains(uint32_t req_id) const { return entries_.count(req_id) != 0; }
  size_t size() const { return entries_.size(); }
  // A new request (req_id not in flight). Returns its entry, to fill in the token.
  Entry& add(uint32_t req_id, Clock::time_point now, uint64_t timeout_ms);
  // The entry when req_id is in flight with this token (a reply for it), else nullptr.
  const Entry* find(uint32_t req_id, uint64_t token) const;
  // The entry of req_id when in flight, else nullptr.
  const Entry* find(uint32_t req_id) const;
  bool erase(uint32_t req_id) { return entries_.erase(req_id) != 0; }
  // Removes and returns every request (closing, draining), in no particular order.
  std::vector<std::pair<uint32_t, Entry>> take_all();

  // True when the timer must be armed at `deadline` (earlier than the armed one); records it.
  bool arm(Clock::time_point deadline);
  // The timer fired at `now`: removes and returns the requests past their deadline. `next` is the
  // earliest deadline left (Clock::time_point::max() for none); arm(next) re-arms for it.
  std::vector<std::pair<uint32_t, Entry>> expire(Clock::time_point now, Clock::time_point& next);

 private:
  std::unordered_map<uint32_t, Entry> entries_;
  Clock::time_point timer_at_ = Clock::time_point::max();
};

}  // namespace busgate::gw
