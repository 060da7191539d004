#pragma once
// What a NATS server's -ERR says, as far as the link acts on it. Most -ERRs end the connection (the
// server closes it); permission violations do not: a refused SUB leaves no subscription on the
// server, a refused PUB drops that one message. No I/O.

#include <cstdint>
#include <string>
#include <string_view>

namespace busgate::gw {

struct NatsServerError {
  enum class Kind : uint8_t {
    other,             // anything else (the text is logged)
    subscribe_denied,  // 'Permissions Violation for Subscription to "<subject>"[ using queue "<queue>"]'
    publish_denied,    // 'Permissions Violation for Publish to "<subject>"' or '... with Reply of "<reply>"'
  };
  Kind kind = Kind::other;
  std::string subject;  // subscribe_denied, publish_denied: the subject (or reply subject) named
  std::string queue;    // subscribe_denied: the queue group named, empty for none
};

// `text`: the -ERR's argument as the server sent it (usually in single quotes). Never throws.
NatsServerError classify_nats_error(std::string_view text);

}  // namespace busgate::gw
