#pragma once
// The NATS servers a link may connect to: the configured ones and those the cluster announces in
// INFO's connect_urls, tried in turn. Also what follows from a server's address alone: the
// credentials to present to it (in the URL, or configured) and how long to wait before the next
// attempt. No I/O.

#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

namespace busgate::gw {

// nats://[user:pass@]host:port, nats://token@host:port, tls://host:port, host:port, [v6]:port.
struct NatsServerUrl {
  std::string text;  // as configured or announced
  std::string host, port, user, pass;
  bool tls = false;
};

// Throws ConfigError naming the address when it is not one (unknown scheme, no host, bad port).
NatsServerUrl parse_nats_url(const std::string& s);

// What CONNECT carries to authenticate with a user and password, or a token. Credentials in the
// server's URL take precedence over the configured user and password; a configured token is always
// sent.
struct NatsUserAuth {
  std::string user, pass, token;
};
NatsUserAuth nats_user_auth(const NatsServerUrl& server, const std::string& user, const std::string& password,
                            const std::string& token);

class NatsServerPool {
 public:
  // Throws ConfigError when `servers` is empty or holds an address that is not one.
  explicit NatsServerPool(const std::vector<std::string>& servers);

  // The server to try next: each in turn, announced ones included, starting over after the last.
  NatsServerUrl next();
  // Adds the announced addresses (host:port, as in connect_urls) not in the pool yet, with the
  // scheme and credentials of `via`, the server that announced them. Returns what was added.
  // Addresses that cannot be parsed are ignored.
  std::vector<std::string> learn(const std::vector<std::string>& announced, const NatsServerUrl& via);

  bool any_tls() const;
  const std::vector<NatsServerUrl>& servers() const { return pool_; }

 private:
  std::vector<NatsServerUrl> pool_;
  size_t next_ = 0;
};

// The wait before the next connection attempt: `reconnect_wait_ms` (at least 1 ms), doubled for
// each refusal of the credentials in a row after the first, up to 5 s (or reconnect_wait_ms when
// that is longer). A server that is unreachable is retried soon; one that refuses, less and less.
std::chrono::milliseconds nats_reconnect_delay(int refusals_in_a_row, int reconnect_wait_ms);

}  // namespace busgate::gw
