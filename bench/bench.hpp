#pragma once
// Shared parts of busgate-bench: options, output, a raw-frame busgate connection, a cnats connection.
#include <arpa/inet.h>
#include <nats/nats.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <variant>
#include <vector>

#include "busgate/protocol/codec.hpp"
#include "busgate/protocol/stream.hpp"

namespace busgate::bench {

using Clock = std::chrono::steady_clock;

struct Options {
  std::string target;
  std::string workload = "pubsub";
  size_t size = 128;
  uint64_t count = 200000;
  int subs = 1;
  double seconds = 3;
  double rate = 5000;
  int conns = 1000;
  int threads = 2;  // scale: threads making the handshakes
  int server_pid = 0;
  std::string token = "dev-token";
  std::string subject = "bench.x";
  std::string responder;  // where the request/reply responder connects (default: the target)
  // durable workloads (stored, consume)
  uint32_t window = 256;         // unacknowledged messages in flight
  int64_t prefill = -1;          // consume: messages stored before consuming (-1: --count)
  std::string stream = "BENCHDIRECT";  // direct target: the JetStream stream the workloads create
  std::string durable = "workers";     // the durable consumer's name
  std::string direct_mode = "inbox";   // stored, direct target: inbox (PubAcks counted) | async
  bool subject_given = false;
  // cross-tenant isolation (cross_bench.cpp)
  std::string token_b;                   // tenant B's token
  std::string b_modes = "stalled,slow";  // B's behaviours to run after A alone (stalled, slow, healthy)
  double b_read_rate = 20000;            // B's slow subscriber: messages it reads per second
  size_t b_rcvbuf = 0;                   // ... its SO_RCVBUF (0: the kernel's default)
  int b_mss = 1448;                      // ... its TCP segment size (0: the route's, 64 KiB on loopback)
  bool b_same_thread = false;            // B's publisher on its subscriber's I/O thread (two threads)
  std::string metrics;                   // the gateway's HTTP address: B's publisher stops once B is cut off
  double drain = 2;                      // seconds A's subscriber may take after the window for the rest
};

inline double secs(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Appends one PUB frame (no headers, reply or ack) to `out`: what a client's writer batches.
inline void append_pub(std::string& out, const std::string& subject, std::string_view payload) {
  const size_t s = proto::begin_frame(out);
  proto::mp::Writer w(out);
  w.array_header(3);
  w.uint(3);
  w.str(subject);
  w.bin(payload);
  proto::finish_frame(out, s);
}

inline void emit(const Options& o, const std::string& fields) {
  std::printf("{\"target\":\"%s\",\"workload\":\"%s\",\"size\":%zu,%s}\n", o.target.c_str(), o.workload.c_str(), o.size,
              fields.c_str());
  std::fflush(stdout);
}

// The IPv4 address `host`:`port`.
inline sockaddr_in ipv4_address(const std::string& host, int port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, host.c_str(), &a.sin_addr);
  return a;
}

// A connected TCP socket with TCP_NODELAY (and `rcvbuf`, `mss` when not 0), or an exception.
inline int tcp_connect(const std::string& host, int port, size_t rcvbuf = 0, int mss = 0) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (rcvbuf) {
    int v = static_cast<int>(rcvbuf);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, sizeof v);
  }
  if (mss) setsockopt(fd, IPPROTO_TCP, TCP_MAXSEG, &mss, sizeof mss);
  const sockaddr_in a = ipv4_address(host, port);
  if (connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0) {
    close(fd);
    throw std::runtime_error("connect failed");
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

// A framed HELLO with token authentication.
inline std::string hello_frame(const std::string& token) {
  proto::Hello h;
  h.versions = {1};
  h.auth.type = proto::mp::Type::map;
  proto::mp::Value m, t;
  m.type = t.type = proto::mp::Type::str;
  m.s = "token";
  t.s = token;
  h.auth.map.push_back({"method", m});
  h.auth.map.push_back({"token", t});
  std::string out;
  proto::encode_framed(h, out);
  return out;
}

// A process's resident set in KiB (-1 when unknown).
inline long rss_kib(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.starts_with("VmRSS:")) return std::stol(line.substr(6));
  return -1;
}

inline int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

// Open-loop send times: o.rate a second for o.seconds, from 20 ms from now.
inline std::vector<Clock::time_point> open_loop_schedule(const Options& o) {
  const uint64_t total = static_cast<uint64_t>(o.rate * o.seconds);
  std::vector<Clock::time_point> scheduled(total);
  const auto t0 = Clock::now() + std::chrono::milliseconds(20);
  for (uint64_t i = 0; i < total; ++i)
    scheduled[i] = t0 + std::chrono::nanoseconds(static_cast<int64_t>(static_cast<double>(i) * 1e9 / o.rate));
  return scheduled;
}

// One subscriber's deliveries in a throughput run.
struct Counter {
  std::atomic<uint64_t> n{0};
  std::atomic<int64_t> last_ns{0};
};

// Waits (at most 60 s) until the counters hold `want` deliveries together.
inline void wait_delivered(const std::vector<Counter>& counters, uint64_t want) {
  const auto deadline = Clock::now() + std::chrono::seconds(60);
  for (;;) {
    uint64_t total = 0;
    for (auto& c : counters) total += c.n.load();
    if (total >= want || Clock::now() > deadline) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

// Delivered messages per second from `start_ns` to the last delivery; `lost` = want − delivered.
inline double delivered_rate(const std::vector<Counter>& counters, int64_t start_ns, uint64_t want, uint64_t* lost) {
  uint64_t total = 0;
  int64_t last = start_ns;
  for (auto& c : counters) {
    total += c.n.load();
    last = std::max(last, c.last_ns.load());
  }
  if (lost) *lost = want - std::min(want, total);
  const double elapsed = static_cast<double>(last - start_ns) / 1e9;
  return elapsed > 0 ? static_cast<double>(total) / elapsed : 0;
}

// ------------------------------------------------------------------ busgate side (raw frames)

class BgConn {
 public:
  // `mss`: the largest segment this end accepts (0: the route's; loopback's is about 64 KiB).
  BgConn(const std::string& host, int port, const std::string& token, size_t rcvbuf = 0, int mss = 0)
      : fd_(tcp_connect(host, port, rcvbuf, mss)), parser_(1 << 20) {
    send_all(hello_frame(token));
    proto::Frame f;
    if (!next(f) || !std::holds_alternative<proto::Welcome>(f)) throw std::runtime_error("no WELCOME");
    parser_.set_max_frame(1 << 21);
  }
  ~BgConn() { close(fd_); }

  void send_all(std::string_view data) {
    while (!data.empty()) {
      const ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) throw std::runtime_error("send failed");
      data.remove_prefix(static_cast<size_t>(n));
    }
  }
  // Blocks for the next frame; false on close.
  bool next(proto::Frame& f) {
    while (!buffered(f))
      if (!fill()) return false;
    return true;
  }
  // The next frame among the bytes already received, without reading; false when none is complete.
  // The frame's views are valid until the next call.
  bool buffered(proto::Frame& f) {
    for (;;) {
      std::string_view body;
      const auto st = parser_.next(body);
      if (st == proto::FrameParser::Status::error) throw std::runtime_error("stream error");
      if (st != proto::FrameParser::Status::frame) return false;
      body_copy_.assign(body);
      auto r = proto::decode(body_copy_, proto::Origin::gateway, f);
      if (!r.has_frame) throw std::runtime_error("undecodable frame: " + r.detail);
      if (!std::holds_alternative<proto::Ping>(f)) return true;
      std::string pong;
      proto::encode_framed(proto::Pong{}, pong);
      send_all(pong);
    }
  }
  // One read of whatever the socket has, up to `max` bytes (blocking until something arrives); false on
  // close.
  bool fill(size_t max = 1 << 16) {
    char* p = parser_.prepare(max);
    const ssize_t n = ::recv(fd_, p, max, 0);
    if (n <= 0) return false;
    parser_.commit(static_cast<size_t>(n));
    return true;
  }
  void sub(uint32_t sid, const std::string& subject) {
    std::string out;
    proto::encode_framed(proto::Sub{sid, subject, std::nullopt, {}}, out);
    send_all(out);
    proto::Frame f;
    while (next(f))
      if (std::holds_alternative<proto::Ok>(f)) return;
    throw std::runtime_error("no OK for SUB");
  }
  void flush() {
    std::string out;
    proto::encode_framed(proto::Ping{}, out);
    send_all(out);
    proto::Frame f;
    while (next(f))
      if (std::holds_alternative<proto::Pong>(f)) return;
  }
  int fd() const { return fd_; }

 private:
  int fd_;
  proto::FrameParser parser_;
  std::string body_copy_;
};

inline void parse_hostport(const std::string& url, std::string& host, int& port) {
  const auto p = url.find("://");
  const auto rest = url.substr(p + 3);
  const auto c = rest.rfind(':');
  host = rest.substr(0, c);
  if (host == "localhost") host = "127.0.0.1";
  port = std::stoi(rest.substr(c + 1));
}

inline std::unique_ptr<BgConn> bg_connect(const std::string& url, const std::string& token, size_t rcvbuf = 0,
                                          int mss = 0) {
  std::string host;
  int port = 0;
  parse_hostport(url, host, port);
  return std::make_unique<BgConn>(host, port, token, rcvbuf, mss);
}

// ------------------------------------------------------------------ NATS side (cnats)

inline natsConnection* nats_connect(const std::string& url, bool asap) {
  natsOptions* o = nullptr;
  natsOptions_Create(&o);
  natsOptions_SetURL(o, url.c_str());
  natsOptions_SetSendAsap(o, asap);
  natsConnection* nc = nullptr;
  if (natsConnection_Connect(&nc, o) != NATS_OK) throw std::runtime_error("cannot connect to " + url);
  natsOptions_Destroy(o);
  return nc;
}

// Durable work queues (bench/durable_bench.cpp).
void workload_stored(const Options& o);
void workload_consume(const Options& o);
// Cross-tenant isolation (bench/cross_bench.cpp).
void workload_cross(const Options& o);

// The raw NATS-protocol baseline (bench/raw_bench.cpp, target natsraw://HOST:PORT): runs the
// workload and returns true, or false when it has no raw version.
bool raw_workload(const Options& o);
// Connection scale (bench/scale_bench.cpp).
void workload_scale(const Options& o);

class RawNats;
// A NATS-side service through RawNats that answers every request on `subject` with its payload.
class RawResponder {
 public:
  RawResponder(const std::string& url, const std::string& subject);
  ~RawResponder();
  RawResponder(const RawResponder&) = delete;
  RawResponder& operator=(const RawResponder&) = delete;

 private:
  std::unique_ptr<RawNats> conn_;
  std::thread th_;
};

}  // namespace busgate::bench
