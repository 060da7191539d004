#include "busgate/protocol/stream.hpp"

#include <cstring>
#include <string>

namespace busgate::proto {

char* FrameParser::prepare(size_t n) {
  if (rpos_ > 0 && (rpos_ == wpos_ || buf_.size() - wpos_ < n)) {
    std::memmove(buf_.data(), buf_.data() + rpos_, wpos_ - rpos_);
    wpos_ -= rpos_;
    rpos_ = 0;
  }
  if (buf_.size() - wpos_ < n) buf_.resize(wpos_ + n);
  return buf_.data() + wpos_;
}

void FrameParser::feed(std::string_view bytes) {
  char* p = prepare(bytes.size());
  std::memcpy(p, bytes.data(), bytes.size());
  commit(bytes.size());
}

FrameParser::Status FrameParser::next(std::string_view& body) {
  if (error_ != Code::ok) return Status::error;
  const size_t avail = wpos_ - rpos_;
  if (avail < 4) return Status::need_more;
  const auto* p = reinterpret_cast<const unsigned char*>(buf_.data() + rpos_);
  const uint32_t len = (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
  if (len == 0) {
    error_ = Code::malformed_frame;
    return Status::error;
  }
  if (len > max_frame_) {
    error_ = Code::frame_too_large;
    return Status::error;
  }
  if (avail - 4 < len) return Status::need_more;
  body = std::string_view(buf_.data() + rpos_ + 4, len);
  rpos_ += 4 + len;
  return Status::frame;
}

Sniff sniff(std::string_view b) {
  if (b.empty()) return Sniff::need_more;
  const auto c0 = static_cast<unsigned char>(b[0]);
  if (c0 == 0x16) return Sniff::tls;
  if (c0 != 0 && std::string_view("GPHODC").find(static_cast<char>(c0)) == std::string_view::npos)
    return Sniff::foreign;
  if (b.size() < 2) return Sniff::need_more;
  const auto c1 = static_cast<unsigned char>(b[1]);
  if (c0 != 0) {  // an HTTP method: GET, POST, PUT, PATCH, HEAD, OPTIONS, DELETE, CONNECT
    const bool letter = (c1 >= 'A' && c1 <= 'Z') || (c1 >= 'a' && c1 <= 'z');
    return letter ? Sniff::http : Sniff::foreign;
  }
  return c1 == 0 ? Sniff::busgate : Sniff::foreign;
}

std::string_view tls_alert_reply() {
  static constexpr char kAlert[] = {0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x28};
  return {kAlert, sizeof kAlert};
}

std::string_view http_reply() {
  static const std::string kReply = [] {
    const std::string body =
        "This port speaks the busgate framed protocol (docs/protocol.md), not HTTP. "
        "WebSocket clients connect to /v1/ws on the gateway's HTTP port.\n";
    return "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: " +
           std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
  }();
  return kReply;
}

}  // namespace busgate::proto
