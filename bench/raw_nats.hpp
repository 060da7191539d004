#pragma once
// A direct NATS client built like busgate-bench's busgate side (BgConn): one blocking socket per
// connection and one reader thread per subscriber, publishes batched 256 messages to a send(),
// messages parsed in place from one receive buffer. It is the strongest direct baseline: it does
// what the gateway-side generator does, with the NATS text protocol instead of busgate frames.
#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <charconv>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>

#include "bench.hpp"

namespace busgate::bench {

struct RawMsg {
  std::string_view subject;
  std::string_view reply;
  std::string_view payload;
};

class RawNats {
 public:
  RawNats(const std::string& host, int port) : fd_(tcp_connect(host, port)), buf_(1 << 20, '\0') {
    send_all("CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"name\":\"raw-bench\"}\r\n");
    flush();  // INFO is skipped by the parser; PONG confirms the CONNECT
  }
  ~RawNats() { close(fd_); }
  RawNats(const RawNats&) = delete;
  RawNats& operator=(const RawNats&) = delete;

  int fd() const { return fd_; }

  void send_all(std::string_view data) {
    while (!data.empty()) {
      const ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) throw std::runtime_error("send failed");
      data.remove_prefix(static_cast<size_t>(n));
    }
  }
  void sub(std::string_view subject, int sid) {
    std::string s = "SUB ";
    s.append(subject).append(" ").append(std::to_string(sid)).append("\r\n");
    send_all(s);
  }
  // PING and wait for its PONG (messages arriving before it are dropped: call it on connections
  // that do not subscribe, or before their subscriptions see traffic).
  void flush() {
    send_all("PING\r\n");
    RawMsg m;
    while (next(m, true)) {
    }
    if (!pong_) throw std::runtime_error("connection closed before PONG");
    pong_ = false;
  }
  // Blocks for the next MSG; false on close. With `until_pong`, also returns false at a PONG.
  // The views stay valid until the next call.
  bool next(RawMsg& m, bool until_pong = false) {
    for (;;) {
      const Parsed p = parse(m);
      if (p == Parsed::msg) return true;
      if (p == Parsed::pong && until_pong) return false;
      if (p == Parsed::need && !fill()) return false;
    }
  }

 private:
  enum class Parsed { msg, pong, other, need };

  Parsed parse(RawMsg& m) {
    const char* b = buf_.data() + rd_;
    const size_t avail = wr_ - rd_;
    const void* crp = std::memchr(b, '\r', avail);
    if (!crp || static_cast<const char*>(crp) + 1 >= b + avail) return Parsed::need;
    const size_t line_len = static_cast<size_t>(static_cast<const char*>(crp) - b);
    const std::string_view line(b, line_len);
    if (line.starts_with("MSG ")) {
      // MSG <subject> <sid> [reply] <#bytes>
      std::string_view parts[4];
      size_t n = 0, pos = 4;
      while (pos < line.size() && n < 4) {
        const size_t sp = line.find(' ', pos);
        const size_t e = sp == std::string_view::npos ? line.size() : sp;
        parts[n++] = line.substr(pos, e - pos);
        pos = e + 1;
      }
      if (n < 3) throw std::runtime_error("bad MSG line");
      size_t size = 0;
      const auto sz = parts[n - 1];
      std::from_chars(sz.data(), sz.data() + sz.size(), size);
      const size_t total = line_len + 2 + size + 2;
      if (avail < total) return Parsed::need;
      m.subject = parts[0];
      m.reply = n == 4 ? parts[2] : std::string_view{};
      m.payload = std::string_view(b + line_len + 2, size);
      rd_ += total;
      return Parsed::msg;
    }
    rd_ += line_len + 2;
    if (line == "PING") {
      send_all("PONG\r\n");
      return Parsed::other;
    }
    if (line == "PONG") {
      pong_ = true;
      return Parsed::pong;
    }
    if (line.starts_with("-ERR")) throw std::runtime_error(std::string(line));
    return Parsed::other;  // INFO, +OK
  }
  bool fill() {
    if (rd_ == wr_) rd_ = wr_ = 0;
    if (buf_.size() - wr_ < (1 << 16)) {  // move the partial message to the front, grow if needed
      std::memmove(buf_.data(), buf_.data() + rd_, wr_ - rd_);
      wr_ -= rd_;
      rd_ = 0;
      if (buf_.size() - wr_ < (1 << 16)) buf_.resize(buf_.size() * 2);
    }
    const ssize_t n = ::recv(fd_, buf_.data() + wr_, buf_.size() - wr_, 0);
    if (n <= 0) return false;
    wr_ += static_cast<size_t>(n);
    return true;
  }

  int fd_;
  std::string buf_;
  size_t rd_ = 0, wr_ = 0;
  bool pong_ = false;
};

// Appends one NATS PUB (what a client's writer batches).
inline void append_nats_pub(std::string& out, std::string_view subject, std::string_view reply,
                            std::string_view payload) {
  out.append("PUB ").append(subject);
  if (!reply.empty()) out.append(" ").append(reply);
  out.append(" ").append(std::to_string(payload.size())).append("\r\n").append(payload).append("\r\n");
}

}  // namespace busgate::bench
