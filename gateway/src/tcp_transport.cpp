#include "tcp_transport.hpp"

#include <boost/asio/write.hpp>

#include "server.hpp"
#include "session.hpp"

namespace busgate::gw {

namespace asio = boost::asio;
using proto::Code;

namespace {
constexpr size_t kReadChunk = 64 * 1024;
constexpr auto kLinger = std::chrono::seconds(1);
}  // namespace

TcpTransport::TcpTransport(Server& server, asio::ip::tcp::socket socket)
    : server_(server),
      socket_(std::move(socket)),
      linger_timer_(socket_.get_executor()),
      parser_(proto::kPreHandshakeMaxFrame) {
  boost::system::error_code ec;
  const auto ep = socket_.remote_endpoint(ec);
  remote_ = ec ? std::string("?") : ep.address().to_string() + ":" + std::to_string(ep.port());
  socket_.set_option(asio::ip::tcp::no_delay(true), ec);
}

void TcpTransport::start() {
  session_ = std::make_shared<Session>(server_, socket_.get_executor(), server_.next_session_id());
  session_->attach(this);
  server_.add_session(session_);
  do_read();
}

void TcpTransport::do_read() {
  // While closing, reads only drain the socket so the peer sees our last frame instead of a reset.
  char* buf = closing_ ? discard_ : parser_.prepare(kReadChunk);
  const size_t len = closing_ ? sizeof discard_ : kReadChunk;
  socket_.async_read_some(asio::buffer(buf, len), [self = shared_from_this()](const boost::system::error_code& ec,
                                                                              size_t n) { self->on_read(ec, n); });
}

void TcpTransport::on_read(const boost::system::error_code& ec, size_t n) {
  if (ec) return finish(ec == asio::error::eof ? "peer closed" : ec.message());
  if (closing_) return do_read();
  parser_.commit(n);
  if (!sniffed_) {
    switch (proto::sniff(parser_.peek())) {
      case proto::Sniff::need_more: return do_read();
      case proto::Sniff::http:
        server_.metrics().foreign_protocol_rejects.fetch_add(1);
        return reply_raw_and_close(proto::http_reply(), "NOT_BUSGATE: an HTTP request on the busgate TCP port");
      case proto::Sniff::tls:
        server_.metrics().foreign_protocol_rejects.fetch_add(1);
        return reply_raw_and_close(proto::tls_alert_reply(), "NOT_BUSGATE: a TLS handshake on the plain TCP port");
      case proto::Sniff::foreign:
        server_.metrics().foreign_protocol_rejects.fetch_add(1);
        session_->fail(Code::not_busgate, "not busgate framing");
        return do_read();
      case proto::Sniff::busgate: sniffed_ = true; break;
    }
  }
  std::string_view body;
  while (!closing_ && session_->state() != Session::State::closed) {
    const auto st = parser_.next(body);
    if (st == proto::FrameParser::Status::need_more) break;
    if (st == proto::FrameParser::Status::error) {
      const Code c = parser_.error();
      session_->fail(c, c == Code::frame_too_large
                            ? "frame length is above the maximum of " + std::to_string(parser_.max_frame()) + " bytes"
                            : std::string("a frame length of zero is not allowed"));
      break;
    }
    session_->on_frame(body);
  }
  session_->on_batch_end();
  do_read();
}

void TcpTransport::write(const std::string& frames, std::function<void(bool)> done) {
  asio::async_write(socket_, asio::buffer(frames),
                    [self = shared_from_this(), done = std::move(done)](const boost::system::error_code& ec, size_t) {
                      done(!ec);
                    });
}

void TcpTransport::reply_raw_and_close(std::string_view bytes, const char* why) {
  closing_ = true;
  close_reason_ = why;
  asio::async_write(socket_, asio::buffer(bytes.data(), bytes.size()),
                    [self = shared_from_this()](const boost::system::error_code&, size_t) { self->linger(); });
  do_read();
}

void TcpTransport::close(proto::Code) {
  if (closing_ && linger_started_) return;
  closing_ = true;
  linger();
}

void TcpTransport::abort() {
  closing_ = true;
  if (close_reason_.empty()) close_reason_ = "closed by gateway (peer not reading)";
  boost::system::error_code ec;
  socket_.close(ec);  // pending reads and writes fail; finish() runs from the read handler
}

// Half-close; the read loop drains until the peer closes, or the timer closes after a second.
void TcpTransport::linger() {
  linger_started_ = true;
  boost::system::error_code ec;
  socket_.shutdown(asio::ip::tcp::socket::shutdown_send, ec);
  linger_timer_.expires_after(kLinger);
  linger_timer_.async_wait([self = shared_from_this()](const boost::system::error_code& e) {
    if (!e) {
      boost::system::error_code ignored;
      self->socket_.close(ignored);  // the pending read then fails and finish() runs
    }
  });
}

void TcpTransport::finish(std::string reason) {
  if (finished_) return;
  finished_ = true;
  boost::system::error_code ec;
  socket_.close(ec);
  linger_timer_.cancel();
  if (!close_reason_.empty()) reason = close_reason_;
  if (session_) {
    session_->on_closed(std::move(reason));
    session_.reset();
  }
}

}  // namespace busgate::gw
