#pragma once
// What the link sends to the server: one write buffer shared by every thread, written in batches by
// the link thread (while one batch is being written the next accumulates), or at once from the
// caller's thread when the link is idle and the caller waits on the message. The buffer is bounded:
// past `congested` bytes publishers are asked to pause (when_drained), past `refuse` publishes are
// refused. PINGs are shared: every ping() made before the next batch goes out waits for one PING
// at the end of that batch, and a ping() made when nothing was queued or written since the last
// PING waits for that one.
//
// The writer does no I/O of its own except those immediate writes (a non-blocking send() on the
// plain socket's descriptor). The link thread takes batches (begin_batch), writes them, and reports
// the outcome (end_batch), and tells the writer about the connection (go_up, go_down) and about
// each PONG (on_pong).

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "busgate/protocol/errors.hpp"

namespace busgate::gw {

// Appends PUB (or HPUB when `headers`, a full NATS header block, is not empty).
void nats_encode_pub(std::string& out, std::string_view subject, std::string_view reply, std::string_view headers,
                     std::string_view payload);

struct NatsWriterLimits {
  size_t congested = 8u << 20;    // queued above this: congested
  size_t refuse = 64u << 20;      // queued above this: publishes are refused
  size_t keep_buffer = 1u << 20;  // buffers above this are released once the link is idle
};

class NatsWriter {
 public:
  using Limits = NatsWriterLimits;
  using DoneFn = std::function<void(bool ok)>;
  using Task = std::function<void()>;
  using Tasks = std::vector<Task>;

  // `schedule`: asks the link thread to call begin_batch() soon. Called with the writer's lock
  // held: it must not call the writer.
  explicit NatsWriter(std::function<void()> schedule, Limits limits = {});
  NatsWriter(const NatsWriter&) = delete;
  NatsWriter& operator=(const NatsWriter&) = delete;

  // ---- any thread

  // ok, or bus_unavailable (down, or more than `refuse` bytes queued). `now`: the caller waits on
  // this message; when nothing else is queued it is written from this thread at once.
  proto::Code publish(std::string_view subject, std::string_view reply, std::string_view headers,
                      std::string_view payload, bool now);
  // Queues protocol bytes (SUB, UNSUB). False when down: nothing is queued.
  bool append(std::string_view protocol);
  // done(true) once the server answered a PING written after everything queued or written before
  // this call; done(false) when the connection is lost first, or at once when down. `done` runs on
  // the link thread (or on this one when down) and must not call the writer's link-thread side.
  void ping(DoneFn done);
  // True while more than `congested` bytes wait; `fn` runs (at once when not congested or down;
  // else on the link thread) once they are down to half of it, or the connection is lost.
  bool congested() const;
  void when_drained(Task fn);
  bool up() const;
  size_t queued() const;

  // ---- the link thread

  // The connection is ready: `fd` the plain socket's descriptor for immediate writes (-1: none,
  // e.g. TLS); `first` goes out before everything queued (the subscriptions).
  void go_up(int fd, std::string_view first);
  // The connection is lost. Complete messages never handed to the socket stay queued for the next
  // connection; pings and drain waiters are returned, to be run (they fail).
  Tasks go_down();
  // Down for good: like go_down, and `rest` receives what was queued (for a last write) unless a
  // batch was being written.
  Tasks stop(std::string& rest);
  void answer_ping();     // queues PONG
  void keepalive_ping();  // queues a PING of its own (nobody waits on it)
  // The next batch to write (valid until end_batch or go_down), nullptr when there is nothing or a
  // batch is being written.
  const std::string* begin_batch();
  // The batch was written. Returns the drain waiters to run, if the congestion ended.
  Tasks end_batch();
  // A PONG arrived: the completion of the oldest PING written (empty when none is outstanding: a
  // PONG nobody asked for changes nothing).
  Task on_pong();

 private:
  struct Waiter {
    std::vector<DoneFn> fns;
    uint64_t seq = 0;       // seq_ when its PING was queued or written
    bool joinable = true;   // false for a PING left from an earlier connection
  };
  bool idle_locked() const { return fd_ >= 0 && !writing_ && !posted_ && out_.empty(); }
  void kick_locked();
  bool try_direct_locked(std::string_view data);
  Tasks down_locked();

  const std::function<void()> schedule_;
  const Limits limits_;

  mutable std::mutex mu_;
  bool up_ = false;
  int fd_ = -1;
  bool writing_ = false, posted_ = false;
  std::string out_, wbuf_;
  size_t out_partial_ = 0;  // leading bytes of out_ that finish a partly written immediate send
  uint64_t seq_ = 0;        // bumped by every message queued or written (not by PING and PONG)
  std::deque<Waiter> waiters_;  // one per PING written or queued, in order
  size_t unsent_ = 0;           // the last unsent_ of waiters_ have their PING in out_
  std::optional<Waiter> open_;  // pings waiting for the PING at the end of the next batch
  std::atomic<bool> congested_{false};  // written under mu_, read without it
  std::vector<Task> drain_waiters_;
};

}  // namespace busgate::gw
