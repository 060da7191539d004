#pragma once
// Deferred flushes. While a thread hands out the messages of one read (the NATS link's read buffer,
// a connection's batch of PUBs on the memory bus), a connection that receives frames is flushed once,
// at the end of that read, instead of at its first frame: one wake-up of the connection's thread and
// one write per connection per read, however many messages the read held (as nats-server flushes
// each client once per read). Outside a batch a flush is posted at once, as before.
//
//   { FlushBatch batch;  ... hand out messages ... }   // the deferred flushes are posted here
//
// Nested batches on one thread join the outermost. Thread-local: a batch never crosses threads.

#include <functional>

namespace busgate::gw {

class FlushBatch {
 public:
  FlushBatch();
  ~FlushBatch();
  FlushBatch(const FlushBatch&) = delete;
  FlushBatch& operator=(const FlushBatch&) = delete;

  // Defers `flush` to the end of this thread's batch: false when no batch is open (run it now).
  static bool defer(std::function<void()>&& flush);
};

}  // namespace busgate::gw
