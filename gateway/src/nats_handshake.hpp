#pragma once
// The start of a NATS connection, as a pure state machine: the server's INFO, the TLS upgrade when
// the server or the configuration asks for it, CONNECT (user and password, token, or a signed
// nonce for nkey / JWT authentication) followed by PING, and the PONG that makes the connection
// usable, or the -ERR that refuses it. The caller does the I/O: it hands over what the parser
// reads and does what each step says.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "nats_auth.hpp"
#include "nats_link.hpp"
#include "nats_parser.hpp"
#include "nats_servers.hpp"

namespace busgate::gw {

// What the link uses of an INFO.
struct NatsInfo {
  int64_t max_payload = 0;  // 0: not announced
  bool tls_required = false;
  std::string nonce;
  std::vector<std::string> connect_urls;
};

// An INFO's JSON; nullopt (and, in `why`, the reason) when it is not a JSON object. Fields of an
// unexpected type are ignored. Never throws.
std::optional<NatsInfo> parse_nats_info(std::string_view json, std::string* why = nullptr);

// "CONNECT {...}\r\nPING\r\n" for `server`: the link's name, protocol options (headers, no
// responders, echo), the credentials, and with a seed in `creds` the signature of `nonce`.
// Throws (std::exception) when the seed cannot sign.
std::string nats_connect_message(const NatsLinkOptions& opt, const NatsCreds& creds, const NatsServerUrl& server,
                                 std::string_view nonce, bool tls);

class NatsHandshake {
 public:
  enum class Next : uint8_t {
    wait,       // read more
    start_tls,  // upgrade the connection to TLS, then call tls_done()
    send,       // write `data` (CONNECT and PING), then read more
    ready,      // the server answered the PING: the connection is usable
    fail,       // end this attempt; `data` says why, `refused` when the server refused the credentials
  };
  struct Step {
    Next next = Next::wait;
    std::string data;
    bool refused = false;
    std::optional<NatsInfo> info;  // an INFO that arrived with this item, to be applied
  };

  // Holds `opt` and `creds` by reference: both must outlive the handshake (temporaries are refused).
  NatsHandshake(const NatsLinkOptions& opt, const NatsCreds& creds, NatsServerUrl server);
  NatsHandshake(NatsLinkOptions&&, const NatsCreds&, NatsServerUrl) = delete;
  NatsHandshake(const NatsLinkOptions&, NatsCreds&&, NatsServerUrl) = delete;

  // One protocol message from the server.
  Step on_item(const NatsItem& item);
  // The TLS handshake succeeded: CONNECT follows.
  Step tls_done();

  // Why the attempt fails when the parser reports `parser_error`, or a read fails with `error`.
  std::string protocol_error(const std::string& parser_error) const;
  std::string read_error(const std::string& error) const;
  // What the handshake waits for, for a connect timeout's message.
  std::string waiting_for() const;
  bool tls() const { return tls_; }
  const NatsServerUrl& server() const { return server_; }

 private:
  enum class State : uint8_t { info, tls, pong, done };
  Step connect();

  const NatsLinkOptions& opt_;
  const NatsCreds& creds_;
  NatsServerUrl server_;
  State state_ = State::info;
  bool tls_ = false;
  std::string nonce_;
};

}  // namespace busgate::gw
