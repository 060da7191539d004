#pragma once
// The frames queued toward one client and not yet written, with the byte accounting the slow-consumer
// policy uses (docs/protocol.md section 12). Frames are encoded at the end of buf(); the writer takes
// what is queued in batches and writes each batch in slices. Not thread-safe: the connection holds
// its lock around every call.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

namespace busgate::gw {

class OutboundQueue {
 public:
  explicit OutboundQueue(size_t max_pending) : max_pending_(max_pending) {}

  // Where the next frame is encoded (at its end). Roll back a frame with buf().resize(mark).
  std::string& buf() { return out_; }
  // Bytes queued and not yet written.
  size_t pending() const { return out_.size() + (write_.size() - write_off_); }
  size_t max_pending() const { return max_pending_; }
  bool past_half() const { return pending() > max_pending_ / 2; }

  enum class Admit {
    ok,
    warn,  // ok, and the queue passed half of max_pending for the first time since it last emptied
    over,  // `extra` more bytes would take the queue past max_pending: drop the frame
  };
  Admit admit(size_t extra);
  // The slow-consumer policy was applied (once per connection).
  bool mark_slow() { return !std::exchange(slow_, true); }

  // The writer: the next slice to write (at most max_slice bytes; 0 = no limit), empty when nothing is
  // queued or a slice is being written. Then written() once it is.
  std::string_view next_slice(size_t max_slice);
  // The slice is written. True when the queue is empty now (the warning may be sent again).
  bool written();
  bool writing() const { return writing_; }
  // Everything queued when the writer is idle (no slice being written, no batch left over), for a
  // write outside the writer; empty otherwise. Then wrote_direct() with how much of it went out.
  std::string_view idle_bytes() const {
    return writing_ || write_off_ < write_.size() ? std::string_view{} : std::string_view(out_);
  }
  void wrote_direct(size_t n) {
    out_.erase(0, n);
    ++writes_done_;
    if (out_.empty()) warned_ = false;
  }
  uint64_t writes_done() const { return writes_done_; }
  // Frees everything queued (the connection closed).
  void clear();

 private:
  size_t max_pending_;
  std::string out_;    // frames waiting to be written
  std::string write_;  // the batch being written, from write_off_ on
  size_t write_off_ = 0;
  size_t write_len_ = 0;  // the slice being written
  bool writing_ = false;
  bool warned_ = false;
  bool slow_ = false;
  uint64_t writes_done_ = 0;
};

}  // namespace busgate::gw
