#pragma once
// The link's connection to a NATS server, one at a time, on the link's thread: resolve and connect
// to the next server of the pool, the handshake (nats_handshake.hpp) with its TLS upgrade, then
// reading: every protocol message the server sends is parsed in place (nats_parser.hpp) and handed
// over; PINGs of its own keep the connection honest (too many unanswered: the connection is stale).
// Whatever ends a connection (an I/O error, a protocol error from the server, a stale connection,
// a timeout during the handshake) is logged once and followed by the next attempt, after a pause
// that grows while servers refuse the credentials.
//
// Everything here runs on the io_context's one thread; the owner writes through write().

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "nats_auth.hpp"
#include "nats_handshake.hpp"
#include "nats_link.hpp"
#include "nats_parser.hpp"
#include "nats_servers.hpp"

namespace busgate::gw {

class NatsConnection {
 public:
  struct Events {
    // The handshake succeeded. `fd`: the plain socket's descriptor (-1 under TLS); `again`: not the
    // first connection of this link.
    std::function<void(int fd, bool again, const NatsServerUrl& server)> up;
    // The connection (`was_up`) or an attempt to make one ended. Runs before the socket is closed.
    std::function<void(bool was_up, const NatsServerUrl& server)> down;
    // Every protocol message after the handshake (INFO is applied before).
    std::function<void(const NatsItem& item)> item;
    // An INFO, during the handshake or later.
    std::function<void(const NatsInfo& info)> info;
    // Time for a keepalive PING.
    std::function<void()> keepalive;
  };

  // Throws ConfigError when a TLS file that the configuration names cannot be used.
  NatsConnection(boost::asio::io_context& io, const NatsLinkOptions& opt, const NatsCreds& creds,
                 NatsServerPool& pool, Events events);
  NatsConnection(const NatsConnection&) = delete;
  NatsConnection& operator=(const NatsConnection&) = delete;

  void start();  // the first attempt
  // Writes `data` (kept alive by the caller until `done` runs or the connection ends); `done` runs
  // once it is written. A write error ends the connection (and `done` does not run).
  void write(const std::string& data, std::function<void()> done);
  // Ends the current connection (logged with `why`) and tries again.
  void reset(const std::string& why);
  // Ends for good: `rest` is written first when the connection is up and plain TCP (best effort).
  void stop(const std::string& rest);
  bool is_up() const { return up_; }

 private:
  using tcp = boost::asio::ip::tcp;
  using error_code = boost::system::error_code;

  std::unique_ptr<boost::asio::ssl::context> make_tls_context() const;
  template <class F>
  void with_stream(F&& f) {
    if (tls_) f(*tls_);
    else f(*sock_);
  }

  void connect_next();
  void handshake_read(uint64_t g);
  void start_tls(uint64_t g);
  void send_connect(uint64_t g, std::string msg);
  void on_ready(uint64_t g);
  void apply_info(const NatsInfo& info);
  void fail(uint64_t g, const std::string& why);
  void schedule_ping(uint64_t g);
  void read_more(uint64_t g);
  void reserve_for(size_t need);
  bool parse(uint64_t g);

  boost::asio::io_context& io_;
  const NatsLinkOptions& opt_;
  const NatsCreds& creds_;
  NatsServerPool& pool_;
  Events ev_;

  std::unique_ptr<boost::asio::ssl::context> tls_ctx_;
  tcp::resolver resolver_;
  // The previous connection's stream objects outlive it by one connection, so that completion
  // handlers still queued for them never touch freed memory.
  std::unique_ptr<tcp::socket> sock_, old_sock_;
  std::unique_ptr<boost::asio::ssl::stream<tcp::socket&>> tls_, old_tls_;
  boost::asio::steady_timer connect_timer_, ping_timer_, retry_timer_;
  NatsServerUrl current_;
  std::unique_ptr<NatsHandshake> handshake_;  // the current attempt's
  uint64_t gen_ = 0;  // bumped when a connection ends; handlers of older connections do nothing
  bool tcp_connected_ = false;
  std::string hs_;  // handshake reads
  std::array<char, 4096> hs_chunk_{};
  NatsParser parser_;  // the server's protocol messages, in hs_ during the handshake, then in rbuf_
  std::vector<char> rbuf_;
  size_t rbeg_ = 0, rend_ = 0;
  int pings_out_ = 0;
  bool up_ = false;
  bool ever_connected_ = false;
  bool first_attempt_done_ = false;
  bool stopping_ = false;
  std::string last_failure_;
  bool refused_ = false;  // the current attempt ended with -ERR during the handshake
  int refusals_ = 0;      // consecutive attempts that did
};

}  // namespace busgate::gw
