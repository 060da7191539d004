#pragma once
// The busgate error-code registry: one enum, the same numbers as docs/protocol.md.

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

namespace busgate::proto {

enum class Code : uint16_t {
  ok = 0,
  malformed_frame = 100,
  unknown_op = 101,
  frame_too_large = 102,
  not_busgate = 103,
  handshake_required = 104,
  unsupported_version = 105,
  handshake_timeout = 106,
  unexpected_op = 107,
  auth_method_unsupported = 200,
  auth_failed = 201,
  auth_revoked = 202,
  invalid_subject = 300,
  wildcard_not_allowed = 301,
  reserved_subject = 302,
  reserved_header = 303,
  invalid_header = 304,
  invalid_queue = 305,
  permission_denied = 306,
  sid_in_use = 307,
  unknown_sid = 308,
  invalid_option = 309,
  unknown_delivery = 310,
  unknown_stream = 311,
  payload_too_large = 400,
  too_many_subscriptions = 401,
  rate_limited = 402,
  too_many_requests = 403,
  too_many_connections = 404,
  slow_consumer_warning = 405,
  slow_consumer = 406,
  too_many_consumers = 407,
  no_responders = 500,
  request_timeout = 501,
  bus_unavailable = 502,
  duplicate_request_id = 503,
  not_stored = 504,
  internal_error = 600,
  shutting_down = 601,
  idle_timeout = 602,
  closed_by_admin = 603,
  not_supported = 604,
};

struct CodeInfo {
  Code code;
  std::string_view name;  // e.g. "MALFORMED_FRAME"
  bool fatal;             // the gateway closes the connection after sending it
  std::string_view meaning;
};

// Every registered code, in numeric order (Code::ok is not part of the registry).
std::span<const CodeInfo> all_codes();
// Registry entry for a code; nullptr for a number that is not registered.
const CodeInfo* find_code(uint64_t number);
std::optional<Code> code_from_name(std::string_view name);
std::string_view code_name(Code code);
bool is_fatal(Code code);

}  // namespace busgate::proto
