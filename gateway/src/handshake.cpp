#include "handshake.hpp"

#include <algorithm>

namespace busgate::gw {

using proto::Code;

HelloCheck check_hello(const proto::Hello& h) {
  if (std::find(h.versions.begin(), h.versions.end(), proto::kProtocolVersion) == h.versions.end())
    return {Code::unsupported_version, "this gateway speaks protocol versions [1]", {}};
  const auto* method = h.auth.get("method");
  if (!method || method->type != proto::mp::Type::str)
    return {Code::auth_method_unsupported, "auth.method is missing; this gateway supports \"token\"", {}};
  if (method->s != "token")
    return {Code::auth_method_unsupported,
            "auth method '" + std::string(method->s.substr(0, 32)) + "' is not supported; use \"token\"",
            {}};
  const auto* token = h.auth.get("token");
  if (!token || token->type != proto::mp::Type::str) return {Code::auth_failed, "auth.token is missing", {}};
  return {Code::ok, {}, token->s};
}

Negotiated negotiate(const proto::Hello& h, const HandshakeLimits& l) {
  Negotiated n;
  n.max_payload = l.tenant_max_payload;
  // The bus limits payload and headers together; keep room for headers (at most 64 KiB).
  if (l.bus_max_message > 0)
    n.max_payload = std::min(n.max_payload, l.bus_max_message > 2 * kFrameOverhead ? l.bus_max_message - kFrameOverhead
                                                                                    : l.bus_max_message / 2);
  n.max_frame = n.max_payload + kFrameOverhead;
  // The client may ask for a smaller maximum (never below the pre-handshake one); it applies both ways.
  if (const auto* mf = h.opts.get("max_frame"); mf && mf->type == proto::mp::Type::uint)
    n.max_frame = std::clamp<size_t>(mf->u, proto::kPreHandshakeMaxFrame, n.max_frame);
  n.heartbeat_ms = l.heartbeat_ms;
  if (const auto* hb = h.opts.get("heartbeat_ms"); hb && hb->type == proto::mp::Type::uint && hb->u > 0)
    n.heartbeat_ms = static_cast<uint32_t>(std::clamp<uint64_t>(hb->u, l.min_heartbeat_ms, l.heartbeat_ms));
  return n;
}

}  // namespace busgate::gw
