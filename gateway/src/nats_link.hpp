#pragma once
// One client connection to NATS, speaking the NATS wire protocol itself (no client library): one
// socket and one thread per link. Publishes are encoded straight into the write buffer and written
// in batches (or at once, from the caller's thread, when the link is idle and the caller asks);
// received messages are parsed in place and handed to a callback on the link's thread. The link
// reconnects by itself, cycling through the configured servers and the ones the cluster announces,
// and replays its subscriptions.
//
// The link composes four units: the server pool (nats_servers.hpp), the connection with its
// handshake and keepalive (nats_connection.hpp, nats_handshake.hpp), the write buffer
// (nats_writer.hpp) and the subscription table (nats_subs.hpp). Nothing thrown on the link thread
// escapes it, and whatever the server sends that breaks the protocol ends that connection with one
// log line, followed by a reconnect.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "busgate/protocol/errors.hpp"

namespace busgate::gw {

struct NatsLinkOptions {
  std::vector<std::string> servers;  // nats://[user:pass@]host:port, tls://host:port, host:port
  std::string name;                  // connection name, shown by the server's /connz
  std::string user, password, token;
  std::string creds_file;  // a user JWT and nkey seed (.creds), or a seed alone (nkey authentication)
  std::string tls_ca, tls_cert, tls_key;
  int ping_interval_ms = 2000;
  int max_pings_out = 2;
  int reconnect_wait_ms = 200;
  int connect_timeout_ms = 2000;
};

// One received message. The views are valid during the callback only.
struct NatsInbound {
  uint64_t sid = 0;
  std::string_view subject;
  std::string_view reply;
  std::string_view headers;  // the raw NATS header block ("NATS/1.0...\r\n\r\n"), empty for none
  std::string_view payload;
};

class NatsLink {
 public:
  using MsgFn = std::function<void(const NatsInbound&)>;
  // "connected", "reconnected" or "disconnected", with the server's address.
  using EventFn = std::function<void(std::string_view what, const std::string& server)>;
  using DoneFn = std::function<void(bool ok)>;
  // The server refused subscription `sid` (a permissions violation, `error` the server's words): it
  // does not exist on the server and is no longer replayed. Runs on the link thread, before the
  // PONG of any PING sent after that SUB is handled.
  using RefusedFn = std::function<void(uint64_t sid, std::string_view error)>;

  // Throws ConfigError for options that cannot work (a bad URL, an unreadable creds or TLS file).
  NatsLink(NatsLinkOptions opts, MsgFn on_msg, EventFn on_event, RefusedFn on_refused = {});
  ~NatsLink();
  NatsLink(const NatsLink&) = delete;
  NatsLink& operator=(const NatsLink&) = delete;

  // Starts connecting in the background; waits up to `wait` for the first connection.
  // Returns whether it is connected.
  bool start(std::chrono::milliseconds wait);

  bool connected() const;
  int64_t max_payload() const;  // the server's, 0 before the first connection
  uint64_t reconnects() const;
  // Publishes the server refused ('Permissions Violation for Publish'): they were dropped.
  uint64_t publishes_refused() const;

  // Thread-safe. PUB, or HPUB when `headers` (a full NATS header block) is not empty. `now`: the
  // caller waits on this message, so when nothing else is queued it is written from the calling
  // thread at once. ok, bus_unavailable (not connected, or the bus did not drain the link's queue
  // in time) or payload_too_large (above the server's max_payload).
  proto::Code publish(std::string_view subject, std::string_view reply, std::string_view headers,
                      std::string_view payload, bool now);
  // Thread-safe. Subscriptions are remembered and replayed after a reconnect.
  void subscribe(uint64_t sid, std::string_view subject, std::string_view queue);
  void unsubscribe(uint64_t sid);
  // A round trip to the server. `done(true)` runs on the link thread when the PONG to a PING written
  // after everything this link queued or wrote before the call arrives: every message the server
  // sent before it has been handed to the callback by then, and everything published before the
  // call has been processed by the server. `done(false)` when the connection is lost first, or at
  // once (on the calling thread) when it is down. Calls share PINGs: all made before the next write
  // batch wait for one PING at its end, and a call made when nothing was queued or written since
  // the last PING waits for that one. Never call a blocking wait for it from the link thread.
  void ping(DoneFn done);
  // Flow control: true while more than the link's queue bound waits for the socket; `fn` runs (on
  // the link thread, or at once when not congested) when the queue is down to half of it, or the
  // connection is lost.
  bool congested() const;
  void when_drained(std::function<void()> fn);

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace busgate::gw
