#pragma once
// What a Session needs from a transport (TCP, TLS, WebSocket): write batches of frames, close, and
// apply the negotiated maximum frame size to its reader. Transports call the Session back with whole
// frame bodies (Session::on_frame) and tell it when a read batch ends and when the connection is gone.

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

#include "busgate/protocol/errors.hpp"

namespace busgate::gw {

class Transport {
 public:
  virtual ~Transport() = default;
  // `frames` is one or more length-prefixed frames (for a byte stream, any slice of them); it stays
  // valid until `done` runs. One write at a time. Called on the connection's executor.
  virtual void write(std::string_view frames, std::function<void(bool ok)> done) = 0;
  // From any thread, while no write() is in progress: writes what it can of `bytes` at once without
  // blocking and returns how many went out (0: none fit; -1: not supported or closed). Plain TCP
  // supports it; the bytes may end mid-frame.
  virtual long write_now(std::string_view /*bytes*/) { return -1; }
  // Whether writes may cut frames anywhere (TCP, TLS); false when every write must hold whole frames.
  virtual bool byte_stream() const { return true; }
  // The connection's socket descriptor (for TCP progress figures), -1 when there is none.
  virtual int native_fd() { return -1; }
  // Closes after the writes already started (lingering briefly so the peer reads the last frame).
  // `reason` is the fatal error that ends the connection (ok: a normal close); WebSocket maps it to
  // a close code.
  virtual void close(proto::Code reason) = 0;
  // Closes now, dropping whatever is not written yet (a peer that stopped reading).
  virtual void abort() = 0;
  virtual void set_max_frame(size_t max_frame) = 0;
  // Reading pauses when Session::on_batch_end returns false (the bus asked publishers to wait);
  // this starts it again. Called on the connection's executor.
  virtual void resume_read() = 0;
  virtual const char* kind() const = 0;  // "tcp", "tls", "ws", "ws-json"
  virtual const std::string& remote() const = 0;
};

}  // namespace busgate::gw
