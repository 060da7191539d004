#pragma once
// Subject, queue-group and header grammar (docs/protocol.md "Subjects" and "Headers").

#include <string_view>
#include <vector>

#include "busgate/protocol/errors.hpp"

namespace busgate::proto {

inline constexpr size_t kMaxSubjectLength = 256;
inline constexpr size_t kMaxQueueLength = 64;
inline constexpr size_t kMaxHeaderKeyLength = 64;
inline constexpr size_t kMaxHeaderValueLength = 4096;
inline constexpr size_t kMaxHeaders = 64;
inline constexpr std::string_view kReservedHeaderPrefix = "busgate-";
inline constexpr std::string_view kTenantHeader = "busgate-tenant";

// Grammar check. Returns INVALID_SUBJECT, or WILDCARD_NOT_ALLOWED when the subject is well-formed but
// has a wildcard token and allow_wildcards is false.
Code validate_subject(std::string_view subject, bool allow_wildcards);
bool has_wildcard(std::string_view subject);  // for subjects that passed validate_subject
bool is_reserved_subject(std::string_view subject);  // starts with '$'
Code validate_queue(std::string_view queue);
bool is_reserved_header(std::string_view key);  // "busgate-" prefix, ASCII case-insensitive
Code validate_header(std::string_view key, std::string_view value);

// The '.'-separated tokens of a subject or pattern (views into it).
std::vector<std::string_view> subject_tokens(std::string_view subject);

// NATS semantics: '*' matches one token, '>' (last) one or more.
bool subject_matches(std::string_view pattern, std::string_view subject);

}  // namespace busgate::proto
