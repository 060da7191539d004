#pragma once
// The HELLO → WELCOME handshake as pure functions (docs/protocol.md section 6): what a HELLO must hold
// before its token is looked up, and the limits both sides then use. No I/O, no state.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "busgate/protocol/errors.hpp"
#include "busgate/protocol/frame.hpp"

namespace busgate::gw {

struct HelloCheck {
  proto::Code code = proto::Code::ok;  // the fatal error when not ok
  std::string message;
  std::string_view token;  // the credential to authenticate when ok (a view into the HELLO)
};
// Version and auth method; the token itself is authenticated by the caller.
HelloCheck check_hello(const proto::Hello& h);

struct HandshakeLimits {
  size_t tenant_max_payload = proto::kDefaultMaxPayload;
  size_t bus_max_message = 0;  // the bus's bound on payload and headers together; 0 = none
  uint32_t heartbeat_ms = 30000;
  uint32_t min_heartbeat_ms = 100;
};
struct Negotiated {
  size_t max_payload = 0;
  size_t max_frame = 0;
  uint32_t heartbeat_ms = 0;
};
// max_payload: the tenant's, lowered to leave room for headers within the bus's bound. max_frame:
// max_payload plus the frame overhead, or the client's smaller wish (never below the pre-handshake
// maximum). heartbeat_ms: the client's wish clamped to [min_heartbeat_ms, heartbeat_ms].
Negotiated negotiate(const proto::Hello& h, const HandshakeLimits& l);

// Room for subject, headers and reply subject in a frame, above max_payload.
inline constexpr size_t kFrameOverhead = 65536;

}  // namespace busgate::gw
