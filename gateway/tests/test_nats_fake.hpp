#pragma once
// A NATS server played by hand for the link's tests: a real loopback listener (port 0), and for
// each accepted connection a peer that sends exactly the bytes a test gives it and records every
// byte the link sends. Every wait is bounded. Also: a recorder of what a link reports, and a
// capture of the log.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "nats_link.hpp"

namespace busgate::gw::test {

using namespace std::chrono_literals;
using Ms = std::chrono::milliseconds;

class FakePeer {
 public:
  explicit FakePeer(int fd) : fd_(fd) {
    int one = 1;  // every send() a segment of its own: partial reads on the link's side
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  ~FakePeer() { close(); }
  FakePeer(const FakePeer&) = delete;
  FakePeer& operator=(const FakePeer&) = delete;

  bool send(std::string_view s) {
    while (!s.empty()) {
      const ssize_t n = ::send(fd_, s.data(), s.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      s.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }
  // Reads until `needle` occurs at or after `from` in what was received; false on timeout or EOF.
  bool wait_for(std::string_view needle, Ms timeout = 5000ms, size_t from = 0) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (got_.find(needle, from) == std::string::npos)
      if (!read_some(deadline)) return false;
    return true;
  }
  // Reads until `n` occurrences of `needle` were received in all.
  bool wait_count(std::string_view needle, size_t n, Ms timeout = 5000ms) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (count(needle) < n)
      if (!read_some(deadline)) return false;
    return true;
  }
  // True once the link closed the connection (EOF or reset) within `timeout`.
  bool wait_closed(Ms timeout = 5000ms) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!eof_)
      if (!read_some(deadline) && !eof_) return false;
    return true;
  }
  // Reads whatever arrives within `d`.
  void drain_for(Ms d) {
    const auto deadline = std::chrono::steady_clock::now() + d;
    while (read_some(deadline)) {
    }
  }
  size_t count(std::string_view needle) const {
    size_t n = 0;
    for (size_t p = got_.find(needle); p != std::string::npos; p = got_.find(needle, p + needle.size())) ++n;
    return n;
  }
  const std::string& got() const { return got_; }
  bool closed_by_link() const { return eof_; }
  // INFO, then the PONG to the link's CONNECT + PING.
  bool handshake(std::string_view info = R"({"server_id":"fake","max_payload":1024,"headers":true})") {
    return send("INFO " + std::string(info) + "\r\n") && wait_for("PING\r\n") && got_.starts_with("CONNECT {") &&
           send("PONG\r\n");
  }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  bool read_some(std::chrono::steady_clock::time_point deadline) {
    if (eof_ || fd_ < 0) return false;
    const auto left = std::chrono::duration_cast<Ms>(deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left)) <= 0) return false;
    char b[65536];
    const ssize_t n = ::recv(fd_, b, sizeof b, 0);
    if (n <= 0) {
      eof_ = true;
      return false;
    }
    got_.append(b, static_cast<size_t>(n));
    return true;
  }

  int fd_;
  std::string got_;
  bool eof_ = false;
};

class FakeListener {
 public:
  FakeListener() {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 && ::listen(fd_, 8) == 0 &&
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) == 0)
      port_ = ntohs(a.sin_port);
  }
  ~FakeListener() { close(); }
  FakeListener(const FakeListener&) = delete;
  FakeListener& operator=(const FakeListener&) = delete;

  int port() const { return port_; }
  std::string url() const { return "nats://127.0.0.1:" + std::to_string(port_); }
  // The next connection, or nullptr after `timeout`.
  std::unique_ptr<FakePeer> accept(Ms timeout = 5000ms) {
    pollfd p{fd_, POLLIN, 0};
    if (fd_ < 0 || ::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return nullptr;
    const int c = ::accept(fd_, nullptr, nullptr);
    if (c < 0) return nullptr;
    return std::make_unique<FakePeer>(c);
  }
  void close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
  int port_ = 0;
};

// What a link reported: messages (sid, subject, reply, headers, payload), events, refusals.
struct Recorder {
  struct Msg {
    uint64_t sid;
    std::string subject, reply, headers, payload;
  };
  std::mutex mu;
  std::condition_variable cv;
  std::vector<Msg> msgs;
  std::vector<std::string> events;  // "connected 127.0.0.1:..." etc.
  std::vector<std::pair<uint64_t, std::string>> refused;

  NatsLink::MsgFn on_msg() {
    return [this](const NatsInbound& m) {
      std::lock_guard lk(mu);
      msgs.push_back({m.sid, std::string(m.subject), std::string(m.reply), std::string(m.headers),
                      std::string(m.payload)});
      cv.notify_all();
    };
  }
  NatsLink::EventFn on_event() {
    return [this](std::string_view what, const std::string& server) {
      std::lock_guard lk(mu);
      events.push_back(std::string(what) + " " + server);
      cv.notify_all();
    };
  }
  NatsLink::RefusedFn on_refused() {
    return [this](uint64_t sid, std::string_view error) {
      std::lock_guard lk(mu);
      refused.emplace_back(sid, std::string(error));
      cv.notify_all();
    };
  }
  // Waits up to `timeout` for `pred` (called under the lock).
  bool wait(const std::function<bool()>& pred, Ms timeout = 5000ms) {
    std::unique_lock lk(mu);
    return cv.wait_for(lk, timeout, pred);
  }
  std::vector<std::string> payloads() {
    std::lock_guard lk(mu);
    std::vector<std::string> v;
    for (const auto& m : msgs) v.push_back(m.payload);
    return v;
  }
  std::vector<std::string> event_names() {
    std::lock_guard lk(mu);
    std::vector<std::string> v;
    for (const auto& e : events) v.push_back(e.substr(0, e.find(' ')));
    return v;
  }
};

// Captures what is logged while it lives (declare it before the link, so the link is gone first).
class LogCapture {
 public:
  LogCapture() : sink_(std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(4096)), prev_(spdlog::default_logger()) {
    auto l = std::make_shared<spdlog::logger>("test", sink_);
    l->set_level(spdlog::level::info);
    spdlog::set_default_logger(l);
  }
  ~LogCapture() { spdlog::set_default_logger(prev_); }
  LogCapture(const LogCapture&) = delete;
  LogCapture& operator=(const LogCapture&) = delete;

  size_t count(std::string_view needle) const {
    size_t n = 0;
    for (const auto& line : sink_->last_formatted())
      if (line.find(needle) != std::string::npos) ++n;
    return n;
  }
  bool has(std::string_view needle) const { return count(needle) > 0; }

 private:
  std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> sink_;
  std::shared_ptr<spdlog::logger> prev_;
};

// Polls `pred` until it holds or `timeout` passed (for conditions nobody signals, like a log line).
inline bool eventually(const std::function<bool()>& pred, Ms timeout = 5000ms) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(2ms);
  }
  return true;
}

inline NatsLinkOptions fake_options(const std::vector<std::string>& servers) {
  NatsLinkOptions o;
  o.servers = servers;
  o.name = "link-test";
  o.reconnect_wait_ms = 20;
  o.ping_interval_ms = 60000;  // no keepalive PINGs unless a test wants them
  o.connect_timeout_ms = 2000;
  return o;
}

}  // namespace busgate::gw::test
