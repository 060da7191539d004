#include "outbound_queue.hpp"

#include <algorithm>
#include <utility>

namespace busgate::gw {

namespace {
// A burst's buffers are given back once it is over, when they grew past this.
constexpr size_t kKeepCapacity = 4 * 1024 * 1024;
}  // namespace

OutboundQueue::Admit OutboundQueue::admit(size_t extra) {
  const size_t pending_after = pending() + extra;
  if (pending_after > max_pending_) return Admit::over;
  if (!warned_ && pending_after > max_pending_ / 2) {
    warned_ = true;
    return Admit::warn;
  }
  return Admit::ok;
}

std::string_view OutboundQueue::next_slice(size_t max_slice) {
  if (writing_) return {};
  if (write_off_ >= write_.size()) {  // the batch is written: take the next one
    write_.clear();
    write_off_ = 0;
    if (out_.empty()) return {};
    std::swap(out_, write_);
    out_.clear();
  }
  size_t len = write_.size() - write_off_;
  if (max_slice > 0) len = std::min(len, max_slice);
  write_len_ = len;
  writing_ = true;
  return {write_.data() + write_off_, len};
}

bool OutboundQueue::written() {
  writing_ = false;
  ++writes_done_;
  write_off_ += write_len_;
  write_len_ = 0;
  if (write_off_ < write_.size()) return false;
  write_.clear();
  write_off_ = 0;
  if (!out_.empty()) return false;
  // Give memory back once a burst is over (both buffers empty), not between writes of a burst.
  if (write_.capacity() > kKeepCapacity) {
    write_.shrink_to_fit();
    out_.shrink_to_fit();
  }
  warned_ = false;
  return true;
}

void OutboundQueue::clear() {
  out_.clear();
  out_.shrink_to_fit();
}

}  // namespace busgate::gw
