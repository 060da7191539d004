#include "busgate/protocol/errors.hpp"

#include <algorithm>
#include <array>

namespace busgate::proto {
namespace {

constexpr std::array<CodeInfo, 41> kCodes{{
    {Code::malformed_frame, "MALFORMED_FRAME", true,
     "the body is not a msgpack array of the documented shape (bad msgpack, wrong field type, missing "
     "field, trailing bytes, zero length)"},
    {Code::unknown_op, "UNKNOWN_OP", false, "the op code is not in the op table; the frame was skipped"},
    {Code::frame_too_large, "FRAME_TOO_LARGE", true, "the frame length is above the maximum frame size"},
    {Code::not_busgate, "NOT_BUSGATE", true, "the peer's first bytes are not busgate framing"},
    {Code::handshake_required, "HANDSHAKE_REQUIRED", true, "the first frame on a connection must be HELLO"},
    {Code::unsupported_version, "UNSUPPORTED_VERSION", true, "no protocol version in common"},
    {Code::handshake_timeout, "HANDSHAKE_TIMEOUT", true, "no HELLO before the handshake deadline"},
    {Code::unexpected_op, "UNEXPECTED_OP", false,
     "the op is not allowed in this direction or at this point of the connection"},
    {Code::auth_method_unsupported, "AUTH_METHOD_UNSUPPORTED", true, "the auth method is not supported"},
    {Code::auth_failed, "AUTH_FAILED", true, "the credentials were not accepted"},
    {Code::auth_revoked, "AUTH_REVOKED", true, "the credentials were revoked by a configuration reload"},
    {Code::invalid_subject, "INVALID_SUBJECT", false, "the subject does not follow the subject grammar"},
    {Code::wildcard_not_allowed, "WILDCARD_NOT_ALLOWED", false,
     "a wildcard was used where a publish subject is needed"},
    {Code::reserved_subject, "RESERVED_SUBJECT", false, "subjects starting with '$' are reserved"},
    {Code::reserved_header, "RESERVED_HEADER", false, "headers starting with 'busgate-' are reserved"},
    {Code::invalid_header, "INVALID_HEADER", false, "a header key or value does not follow the grammar"},
    {Code::invalid_queue, "INVALID_QUEUE", false, "the queue group name does not follow the grammar"},
    {Code::permission_denied, "PERMISSION_DENIED", false, "the tenant's permissions forbid this"},
    {Code::sid_in_use, "SID_IN_USE", false, "the subscription id is already in use on this connection"},
    {Code::unknown_sid, "UNKNOWN_SID", false, "no live subscription has this id"},
    {Code::invalid_option, "INVALID_OPTION", false, "an option has the wrong type or value"},
    {Code::unknown_delivery, "UNKNOWN_DELIVERY", false, "the delivery id is not outstanding on this subscription"},
    {Code::unknown_stream, "UNKNOWN_STREAM", false, "no stream of the tenant stores this subject"},
    {Code::payload_too_large, "PAYLOAD_TOO_LARGE", false, "the payload is above the maximum payload size"},
    {Code::too_many_subscriptions, "TOO_MANY_SUBSCRIPTIONS", false,
     "the connection reached its subscription limit"},
    {Code::rate_limited, "RATE_LIMITED", false,
     "the tenant's publish rate limit was exceeded; the message was dropped"},
    {Code::too_many_requests, "TOO_MANY_REQUESTS", false,
     "the tenant reached its limit of concurrent requests"},
    {Code::too_many_connections, "TOO_MANY_CONNECTIONS", true, "the tenant reached its connection limit"},
    {Code::slow_consumer_warning, "SLOW_CONSUMER_WARNING", false,
     "the outbound queue to this client passed half of its bound"},
    {Code::slow_consumer, "SLOW_CONSUMER", true,
     "the outbound queue to this client passed its bound; the connection is closed"},
    {Code::too_many_consumers, "TOO_MANY_CONSUMERS", false, "the tenant reached its limit of client-created consumers"},
    {Code::no_responders, "NO_RESPONDERS", false, "nobody is subscribed to the request subject"},
    {Code::request_timeout, "REQUEST_TIMEOUT", false, "no reply arrived within the request timeout"},
    {Code::bus_unavailable, "BUS_UNAVAILABLE", false, "the message bus is unavailable; nothing was accepted"},
    {Code::duplicate_request_id, "DUPLICATE_REQUEST_ID", false, "the request id is already in flight"},
    {Code::not_stored, "NOT_STORED", false, "the stream could not store the message; it was not published"},
    {Code::internal_error, "INTERNAL_ERROR", false, "the gateway failed to act on the frame"},
    {Code::shutting_down, "SHUTTING_DOWN", true, "the gateway is shutting down (drain deadline reached)"},
    {Code::idle_timeout, "IDLE_TIMEOUT", true, "nothing was received from the client for too long"},
    {Code::closed_by_admin, "CLOSED_BY_ADMIN", true, "an operator closed the connection"},
    {Code::not_supported, "NOT_SUPPORTED", false, "the option or feature is not implemented here"},
}};

}  // namespace

std::span<const CodeInfo> all_codes() { return kCodes; }

const CodeInfo* find_code(uint64_t number) {
  auto it = std::lower_bound(kCodes.begin(), kCodes.end(), number,
                             [](const CodeInfo& c, uint64_t n) { return static_cast<uint64_t>(c.code) < n; });
  if (it == kCodes.end() || static_cast<uint64_t>(it->code) != number) return nullptr;
  return &*it;
}

std::optional<Code> code_from_name(std::string_view name) {
  for (const auto& c : kCodes)
    if (c.name == name) return c.code;
  if (name == "OK") return Code::ok;
  return std::nullopt;
}

std::string_view code_name(Code code) {
  if (code == Code::ok) return "OK";
  const CodeInfo* c = find_code(static_cast<uint64_t>(code));
  return c ? c->name : std::string_view{"UNKNOWN"};
}

bool is_fatal(Code code) {
  const CodeInfo* c = find_code(static_cast<uint64_t>(code));
  return c && c->fatal;
}

}  // namespace busgate::proto
