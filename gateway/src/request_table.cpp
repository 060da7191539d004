#include "request_table.hpp"

namespace busgate::gw {

RequestTable::Entry& RequestTable::add(uint32_t req_id, Clock::time_point now, uint64_t timeout_ms) {
  Entry& e = entries_[req_id];
  e.started = now;
  e.deadline = now + std::chrono::milliseconds(timeout_ms);
  e.timeout_ms = timeout_ms;
  e.claim = std::make_shared<std::atomic<int>>(Entry::kPending);
  return e;
}

const RequestTable::Entry* RequestTable::find(uint32_t req_id) const {
  auto it = entries_.find(req_id);
  return it == entries_.end() ? nullptr : &it->second;
}

const RequestTable::Entry* RequestTable::find(uint32_t req_id, uint64_t token) const {
  auto it = entries_.find(req_id);
  if (it == entries_.end() || it->second.token != token) return nullptr;
  return &it->second;
}

std::vector<std::pair<uint32_t, RequestTable::Entry>> RequestTable::take_all() {
  std::vector<std::pair<uint32_t, Entry>> out(entries_.begin(), entries_.end());
  entries_.clear();
  return out;
}

bool RequestTable::arm(Clock::time_point deadline) {
  if (deadline >= timer_at_) return false;
  timer_at_ = deadline;
  return true;
}

std::vector<std::pair<uint32_t, RequestTable::Entry>> RequestTable::expire(Clock::time_point now,
                                                                         Clock::time_point& next) {
  timer_at_ = Clock::time_point::max();
  next = Clock::time_point::max();
  std::vector<std::pair<uint32_t, Entry>> out;
  for (auto it = entries_.begin(); it != entries_.end();) {
    if (it->second.deadline <= now) {
      out.emplace_back(*it);
      it = entries_.erase(it);
    } else {
      if (it->second.deadline < next) next = it->second.deadline;
      ++it;
    }
  }
  return out;
}

}  // namespace busgate::gw
