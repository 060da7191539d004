#pragma once
// What a Session needs from a transport (TCP, TLS, WebSocket): write batches of frames, close, and
// apply the negotiated maximum frame size to its reader. Transports call the Session back with whole
// frame bodies (Session::on_frame) and tell it when a read batch ends and when the connection is gone.

#include <cstddef>
#include <functional>
#include <string>

#include "busgate/protocol/errors.hpp"

namespace busgate::gw {

class Transport {
 public:
  virtual ~Transport() = default;
  // `frames` is one or more length-prefixed frames; it stays valid until `done` runs. One write at a
  // time. Called on the connection's executor.
  virtual void write(const std::string& frames, std::function<void(bool ok)> done) = 0;
  // Closes after the writes already started (lingering briefly so the peer reads the last frame).
  // `reason` is the fatal error that ends the connection (ok: a normal close); WebSocket maps it to
  // a close code.
  virtual void close(proto::Code reason) = 0;
  // Closes now, dropping whatever is not written yet (a peer that stopped reading).
  virtual void abort() = 0;
  virtual void set_max_frame(size_t max_frame) = 0;
  virtual const char* kind() const = 0;  // "tcp", "tls", "ws", "ws-json"
  virtual const std::string& remote() const = 0;
};

}  // namespace busgate::gw
