// busgate-bench workload `scale`: hold as many idle, handshaked connections as the descriptor limits
// allow (--conns at most), then measure a fresh client's round trips at that level.
//
// Connections come from source addresses 127.R.0.2, 127.R.0.3, ... (a new one every 5,000
// connections), so the ephemeral-port range of one source address is never the limit. Handshakes
// run on --threads threads (default 2); each is a whole busgate HELLO/WELCOME (or NATS CONNECT +
// PING/PONG). Prints connections held, handshakes per second, the server's RSS growth per
// connection and the fresh client's PING round-trip percentiles (2,000 round trips).
#include <fcntl.h>
#include <cerrno>
#include <cstring>
#include <sys/resource.h>

#include <atomic>
#include <fstream>
#include <mutex>
#include <thread>
#include <vector>

#include "bench.hpp"
#include "histogram.hpp"

namespace busgate::bench {

namespace {

// Connects from `src` (network order); -1 when the connection could not be made.
int connect_from(uint32_t src, const std::string& host, int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  // the port is chosen at connect(), by the 4-tuple, not by a search at bind()
  setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
  sockaddr_in s{};
  s.sin_family = AF_INET;
  s.sin_addr.s_addr = src;
  if (bind(fd, reinterpret_cast<sockaddr*>(&s), sizeof s) != 0) {
    close(fd);
    return -1;
  }
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  const sockaddr_in a = ipv4_address(host, port);
  if (connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

bool send_all_fd(int fd, std::string_view d) {
  while (!d.empty()) {
    const ssize_t n = ::send(fd, d.data(), d.size(), MSG_NOSIGNAL);
    if (n <= 0) return false;
    d.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

// A whole handshake on `fd`; false when the server refused or closed.
bool handshake(int fd, bool nats, const std::string& hello) {
  if (!send_all_fd(fd, hello)) return false;
  char buf[4096];
  if (nats) {
    std::string got;
    while (got.find("PONG\r\n") == std::string::npos) {
      const ssize_t n = recv(fd, buf, sizeof buf, 0);
      if (n <= 0) return false;
      got.append(buf, static_cast<size_t>(n));
    }
    return true;
  }
  proto::FrameParser parser(1 << 16);
  for (;;) {
    std::string_view body;
    const auto st = parser.next(body);
    if (st == proto::FrameParser::Status::error) return false;
    if (st == proto::FrameParser::Status::frame) {
      proto::Frame f;
      const std::string copy(body);
      auto r = proto::decode(copy, proto::Origin::gateway, f);
      return r.has_frame && std::holds_alternative<proto::Welcome>(f);
    }
    char* p = parser.prepare(4096);
    const ssize_t n = recv(fd, p, 4096, 0);
    if (n <= 0) return false;
    parser.commit(static_cast<size_t>(n));
  }
}

std::string hello_bytes(bool nats, const std::string& token) {
  return nats ? "CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n" : hello_frame(token);
}

}  // namespace

void workload_scale(const Options& o) {
  if (!o.server_pid) throw std::runtime_error("scale needs --server-pid");
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  std::string host;
  int port = 0;
  parse_hostport(o.target, host, port);
  const bool nats = o.target.starts_with("nats://");
  const std::string hello = hello_bytes(nats, o.token);
  // this process needs one descriptor per connection too: leave room for the fresh client and stdio
  const int want = std::min<int>(o.conns, static_cast<int>(rl.rlim_cur) - 32);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const long before = rss_kib(o.server_pid);

  std::mutex m;
  std::vector<int> fds;
  fds.reserve(static_cast<size_t>(want));
  std::atomic<int> next{0};
  std::atomic<bool> stop{false};
  std::string first_failure;
  const int threads = std::max(1, o.threads);
  // sources 127.R.0.2, 127.R.0.3, ...: R differs between runs, so that the TIME_WAIT entries a
  // previous run left behind do not take this run's ports
  const uint32_t src_base = 0x7f000002u | ((1u + static_cast<uint32_t>(getpid()) % 250u) << 16);
  const auto t0 = Clock::now();
  std::vector<std::thread> ths;
  for (int t = 0; t < threads; ++t)
    ths.emplace_back([&] {
      for (;;) {
        const int i = next.fetch_add(1);
        if (i >= want || stop.load()) return;
        const uint32_t src = htonl(src_base + static_cast<uint32_t>(i / 5000));
        const int fd = connect_from(src, host, port);
        if (fd < 0 || !handshake(fd, nats, hello)) {
          std::lock_guard lk(m);
          if (first_failure.empty())
            first_failure = std::string(fd < 0 ? "connect: " : "handshake: ") + std::strerror(errno) +
                            " after " + std::to_string(fds.size()) + " connections";
          if (fd >= 0) close(fd);
          stop = true;
          return;
        }
        std::lock_guard lk(m);
        fds.push_back(fd);
      }
    });
  for (auto& t : ths) t.join();
  const double hs_secs = secs(Clock::now() - t0);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const long after = rss_kib(o.server_pid);
  const int held = static_cast<int>(fds.size());

  // A fresh client at that level: its handshake, then PING round trips. The last descriptors are
  // kept for it: a held connection is closed first if this process is out of them.
  Histogram h;
  double fresh_handshake_us = 0;
  int fd = -1;
  for (int attempt = 0; attempt < 2 && fd < 0; ++attempt) {
    const auto s = Clock::now();
    fd = connect_from(htonl(0x7f000001u), host, port);
    if (fd >= 0 && !handshake(fd, nats, hello)) {
      close(fd);
      fd = -1;
    }
    fresh_handshake_us = secs(Clock::now() - s) * 1e6;
    if (fd < 0 && !fds.empty()) {
      close(fds.back());
      fds.pop_back();
    }
  }
  if (fd >= 0) {
    std::string ping;
    if (nats) ping = "PING\r\n";
    else proto::encode_framed(proto::Ping{}, ping);
    char buf[256];
    for (int i = 0; i < 2000; ++i) {
      const auto s = Clock::now();
      if (!send_all_fd(fd, ping)) break;
      // PONG is one small frame (busgate) or "PONG\r\n" (NATS); both arrive in one read on loopback
      if (recv(fd, buf, sizeof buf, 0) <= 0) break;
      h.record(secs(Clock::now() - s) * 1e6);
    }
    close(fd);
  }
  char out[512];
  std::snprintf(out, sizeof out,
                "\"connections\":%d,\"wanted\":%d,\"fd_limit\":%llu,\"handshakes_per_sec\":%.1f,"
                "\"rss_before_kib\":%ld,\"rss_after_kib\":%ld,\"kib_per_conn\":%.2f,\"fresh_handshake_us\":%.1f,"
                "\"rtt_p50_us\":%.1f,\"rtt_p99_us\":%.1f,\"rtt_samples\":%llu,\"stopped_by\":\"%s\"",
                held, want, static_cast<unsigned long long>(rl.rlim_cur), held / hs_secs, before, after,
                held ? static_cast<double>(after - before) / held : 0.0, fresh_handshake_us, h.percentile(50),
                h.percentile(99), static_cast<unsigned long long>(h.count()), first_failure.c_str());
  emit(o, out);
  for (int f : fds) close(f);
}

}  // namespace busgate::bench
