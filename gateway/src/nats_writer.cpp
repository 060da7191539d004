#include "nats_writer.hpp"

#include <sys/socket.h>

#include <charconv>

namespace busgate::gw {

using proto::Code;
using namespace std::literals;

namespace {

constexpr std::string_view kPing = "PING\r\n";

void append_num(std::string& out, size_t v) {
  char buf[24];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, end);
}

}  // namespace

void nats_encode_pub(std::string& out, std::string_view subject, std::string_view reply, std::string_view headers,
                     std::string_view payload) {
  out.append(headers.empty() ? "PUB "sv : "HPUB "sv);
  out.append(subject);
  out.push_back(' ');
  if (!reply.empty()) {
    out.append(reply);
    out.push_back(' ');
  }
  if (!headers.empty()) {
    append_num(out, headers.size());
    out.push_back(' ');
  }
  append_num(out, headers.size() + payload.size());
  out.append("\r\n"sv);
  out.append(headers);
  out.append(payload);
  out.append("\r\n"sv);
}

NatsWriter::NatsWriter(std::function<void()> schedule, Limits limits)
    : schedule_(std::move(schedule)), limits_(limits) {}

void NatsWriter::kick_locked() {
  if (!up_ || writing_ || posted_ || (out_.empty() && !open_)) return;
  posted_ = true;
  schedule_();
}

// Writes `data` to the idle plain socket now; the rest of a partial write is queued. False when
// nothing was written (busy, no descriptor, or the socket refused): the caller queues the data.
bool NatsWriter::try_direct_locked(std::string_view data) {
  if (!idle_locked()) return false;
  const ssize_t n = ::send(fd_, data.data(), data.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  if (n <= 0) return false;  // queued whole by the caller; the link thread writes it or finds the error
  if (static_cast<size_t>(n) < data.size()) {
    out_.append(data.substr(static_cast<size_t>(n)));
    out_partial_ = out_.size();
    kick_locked();
  }
  return true;
}

Code NatsWriter::publish(std::string_view subject, std::string_view reply, std::string_view headers,
                         std::string_view payload, bool now) {
  std::lock_guard lk(mu_);
  if (!up_ || out_.size() > limits_.refuse) return Code::bus_unavailable;
  ++seq_;
  if (now && idle_locked()) {
    thread_local std::string scratch;
    scratch.clear();
    nats_encode_pub(scratch, subject, reply, headers, payload);
    if (try_direct_locked(scratch)) return Code::ok;
  }
  nats_encode_pub(out_, subject, reply, headers, payload);
  if (out_.size() > limits_.congested) congested_.store(true, std::memory_order_relaxed);
  kick_locked();
  return Code::ok;
}

bool NatsWriter::append(std::string_view protocol) {
  std::lock_guard lk(mu_);
  if (!up_) return false;
  ++seq_;
  out_.append(protocol);
  kick_locked();
  return true;
}

void NatsWriter::ping(DoneFn done) {
  {
    std::lock_guard lk(mu_);
    if (up_) {
      if (open_) {  // the PING at the end of the next batch comes after everything queued now
        open_->fns.push_back(std::move(done));
        return;
      }
      if (!waiters_.empty() && waiters_.back().joinable && waiters_.back().seq == seq_) {
        waiters_.back().fns.push_back(std::move(done));  // nothing was queued or written since that PING
        return;
      }
      if (try_direct_locked(kPing)) {
        waiters_.push_back(Waiter{{std::move(done)}, seq_, true});
        return;
      }
      open_.emplace();
      open_->fns.push_back(std::move(done));
      kick_locked();
      return;
    }
  }
  if (done) done(false);
}

void NatsWriter::keepalive_ping() {
  std::lock_guard lk(mu_);
  if (!up_) return;
  if (try_direct_locked(kPing)) {
    waiters_.push_back(Waiter{{}, seq_, true});
    return;
  }
  out_.append(kPing);
  waiters_.push_back(Waiter{{}, seq_, true});
  ++unsent_;
  kick_locked();
}

void NatsWriter::answer_ping() {
  std::lock_guard lk(mu_);
  if (!up_) return;
  out_.append("PONG\r\n"sv);
  kick_locked();
}

bool NatsWriter::congested() const { return congested_.load(std::memory_order_relaxed); }

void NatsWriter::when_drained(Task fn) {
  {
    std::lock_guard lk(mu_);
    if (congested_.load(std::memory_order_relaxed) && up_) {
      drain_waiters_.push_back(std::move(fn));
      return;
    }
  }
  fn();
}

bool NatsWriter::up() const {
  std::lock_guard lk(mu_);
  return up_;
}

size_t NatsWriter::queued() const {
  std::lock_guard lk(mu_);
  return out_.size() + wbuf_.size();
}

void NatsWriter::go_up(int fd, std::string_view first) {
  std::lock_guard lk(mu_);
  out_.insert(0, first);
  up_ = true;
  fd_ = fd;
  ++seq_;
  if (out_.size() > limits_.congested) congested_.store(true, std::memory_order_relaxed);
}

NatsWriter::Tasks NatsWriter::down_locked() {
  Tasks failed;
  up_ = false;
  fd_ = -1;  // before the caller closes the socket: no caller writes to a descriptor that may be reused
  writing_ = posted_ = false;
  wbuf_.clear();
  // Complete messages never handed to the socket go out after the reconnect; the tail of a partly
  // written one cannot.
  out_.erase(0, out_partial_);
  out_partial_ = 0;
  congested_.store(false, std::memory_order_relaxed);
  for (auto& f : drain_waiters_) failed.push_back(std::move(f));
  drain_waiters_.clear();
  auto fail = [&failed](Waiter& w) {
    for (auto& f : w.fns)
      if (f) failed.push_back([f = std::move(f)] { f(false); });
    w.fns.clear();
  };
  if (open_) {
    fail(*open_);
    open_.reset();
  }
  // A PING already handed to the socket gets no PONG now. One still queued goes out on the next
  // connection and its PONG comes back there: its entry stays (with nobody waiting, since what was
  // written before it may be lost), so that the PONGs still match their PINGs.
  const size_t keep = std::min(unsent_, waiters_.size());
  while (waiters_.size() > keep) {
    fail(waiters_.front());
    waiters_.pop_front();
  }
  for (auto& w : waiters_) {
    fail(w);
    w.joinable = false;
  }
  return failed;
}

NatsWriter::Tasks NatsWriter::go_down() {
  std::lock_guard lk(mu_);
  return down_locked();
}

NatsWriter::Tasks NatsWriter::stop(std::string& rest) {
  std::lock_guard lk(mu_);
  const bool was_writing = writing_;
  Tasks failed = down_locked();
  waiters_.clear();
  unsent_ = 0;
  rest.clear();
  if (!was_writing) rest.swap(out_);
  out_.clear();
  return failed;
}

const std::string* NatsWriter::begin_batch() {
  std::lock_guard lk(mu_);
  posted_ = false;
  if (!up_ || writing_) return nullptr;
  if (open_) {
    out_.append(kPing);
    open_->seq = seq_;
    waiters_.push_back(std::move(*open_));
    open_.reset();
    ++unsent_;
  }
  if (out_.empty()) return nullptr;
  wbuf_.swap(out_);
  out_.clear();
  out_partial_ = 0;
  unsent_ = 0;
  writing_ = true;
  return &wbuf_;
}

NatsWriter::Tasks NatsWriter::end_batch() {
  Tasks released;
  std::lock_guard lk(mu_);
  writing_ = false;
  wbuf_.clear();
  if (congested_.load(std::memory_order_relaxed) && out_.size() <= limits_.congested / 2) {
    congested_.store(false, std::memory_order_relaxed);
    released.swap(drain_waiters_);
  }
  // Buffers keep their size during a burst and give it back once the link is idle.
  if (out_.empty() && wbuf_.capacity() > limits_.keep_buffer) {
    std::string().swap(wbuf_);
    std::string().swap(out_);
  }
  return released;
}

NatsWriter::Task NatsWriter::on_pong() {
  std::lock_guard lk(mu_);
  if (waiters_.size() <= unsent_) return {};  // no PING of ours is on its way: not an answer
  Waiter w = std::move(waiters_.front());
  waiters_.pop_front();
  if (w.fns.empty()) return {};
  return [fns = std::move(w.fns)] {
    for (const auto& f : fns)
      if (f) f(true);
  };
}

}  // namespace busgate::gw
