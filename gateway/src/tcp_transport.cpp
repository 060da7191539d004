#include "tcp_transport.hpp"

#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <cerrno>
#include <mutex>

#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

#include "busgate/protocol/stream.hpp"
#include "flush_batch.hpp"
#include "server.hpp"
#include "session.hpp"
#include "transport.hpp"

namespace busgate::gw {

namespace asio = boost::asio;
using proto::Code;
using asio::ip::tcp;

namespace {

// Reads start small (an idle connection holds little memory) and grow while reads fill them.
constexpr size_t kMinReadChunk = 2 * 1024;
constexpr size_t kMaxReadChunk = 64 * 1024;
constexpr auto kLinger = std::chrono::seconds(1);

template <class Stream>
constexpr bool kIsTls = !std::is_same_v<Stream, tcp::socket>;

// One class for plain TCP and TLS: the stream type is the only difference.
template <class Stream>
class StreamTransport final : public Transport, public std::enable_shared_from_this<StreamTransport<Stream>> {
 public:
  template <class... Args>
  StreamTransport(Server& server, Args&&... args)
      : server_(server),
        stream_(std::forward<Args>(args)...),
        linger_timer_(stream_.get_executor()),
        parser_(proto::kPreHandshakeMaxFrame) {
    boost::system::error_code ec;
    const auto ep = lowest().remote_endpoint(ec);
    remote_ = ec ? std::string("?") : ep.address().to_string() + ":" + std::to_string(ep.port());
    lowest().set_option(tcp::no_delay(true), ec);
  }

  void start() {
    if constexpr (kIsTls<Stream>) {
      // The TLS handshake must finish within the busgate handshake deadline.
      linger_timer_.expires_after(std::chrono::milliseconds(server_.config().handshake_timeout_ms));
      linger_timer_.async_wait([self = this->shared_from_this()](const boost::system::error_code& ec) {
        if (!ec && !self->session_) {
          self->close_socket();
        }
      });
      stream_.async_handshake(asio::ssl::stream_base::server,
                              [self = this->shared_from_this()](const boost::system::error_code& ec) {
                                self->linger_timer_.cancel();
                                if (ec) {
                                  spdlog::info("tls handshake failed remote={}: {}", self->remote_, ec.message());
                                  self->close_socket();
                                  return;
                                }
                                self->sniffed_ = true;  // inside TLS only busgate framing is possible
                                self->open_session();
                              });
    } else {
      open_session();
    }
  }

  void write(std::string_view frames, std::function<void(bool)> done) override {
    asio::async_write(stream_, asio::buffer(frames.data(), frames.size()),
                      [self = this->shared_from_this(), done = std::move(done)](const boost::system::error_code& ec,
                                                                                  size_t) { done(!ec); });
  }

  long write_now(std::string_view bytes) override {
    if constexpr (kIsTls<Stream>) {
      return -1;
    } else {
      std::lock_guard lk(socket_mu_);
      if (!writable_) return -1;
      const ssize_t n = ::send(stream_.native_handle(), bytes.data(), bytes.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n >= 0) return n;
      return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? 0 : -1;
    }
  }

  void close(Code) override {
    if (closing_ && linger_started_) return;
    closing_ = true;
    linger();
    resume_read();  // the read loop drains and finishes the connection
  }

  void abort() override {
    closing_ = true;
    if (close_reason_.empty()) close_reason_ = "closed by gateway (peer not reading)";
    close_socket();  // pending reads and writes fail; finish() runs from the read handler
    resume_read();
  }

  void resume_read() override {
    if (!paused_) return;
    const auto self = std::move(paused_);
    if (closing_ || !session_) return do_read();
    pump();  // frames that arrived while paused first
  }

  void set_max_frame(size_t max_frame) override { parser_.set_max_frame(max_frame); }
  int native_fd() override { return lowest().native_handle(); }
  const char* kind() const override { return kIsTls<Stream> ? "tls" : "tcp"; }
  const std::string& remote() const override { return remote_; }

 private:
  tcp::socket& lowest() {
    if constexpr (kIsTls<Stream>) return stream_.next_layer();
    else return stream_;
  }

  // Every close of the socket goes through here: write_now() on another thread never meets a
  // descriptor that was closed (and perhaps reused).
  void close_socket() {
    std::lock_guard lk(socket_mu_);
    writable_ = false;
    boost::system::error_code ignored;
    lowest().close(ignored);
  }

  void open_session() {
    session_ = std::make_shared<Session>(server_, stream_.get_executor(), server_.next_session_id());
    session_->attach(this);
    server_.add_session(session_);
    do_read();
  }

  void do_read() {
    // While closing, reads only drain the socket so the peer sees our last frame instead of a reset.
    char* buf = closing_ ? discard_ : parser_.prepare(read_chunk_);
    const size_t len = closing_ ? sizeof discard_ : read_chunk_;
    stream_.async_read_some(asio::buffer(buf, len),
                            [self = this->shared_from_this()](const boost::system::error_code& ec, size_t n) {
                              self->on_read(ec, n);
                            });
  }

  void on_read(const boost::system::error_code& ec, size_t n) {
    if (ec) return finish(ec == asio::error::eof ? "peer closed" : ec.message());
    if (closing_) return do_read();
    parser_.commit(n);
    if (n == read_chunk_ && read_chunk_ < kMaxReadChunk) read_chunk_ *= 2;
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
    pump();
  }

  // Hands the buffered frames to the session, then reads more, unless the session asks to wait
  // (a SUB waiting for the bus, or a congested bus): resume_read() continues here.
  void pump() {
    FlushBatch batch;  // the connections this batch of frames delivers to are flushed once, at its end
    std::string_view body;
    while (!closing_ && session_->state() != Session::State::closed && !session_->holding()) {
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
    if (!session_->on_batch_end() && !closing_) {
      paused_ = this->shared_from_this();  // no read outstanding: this keeps the connection alive
      return;
    }
    do_read();
  }

  void reply_raw_and_close(std::string_view bytes, const char* why) {
    closing_ = true;
    close_reason_ = why;
    asio::async_write(stream_, asio::buffer(bytes.data(), bytes.size()),
                      [self = this->shared_from_this()](const boost::system::error_code&, size_t) { self->linger(); });
    do_read();
  }

  // Half-close; the read loop drains until the peer closes, or the timer closes after a second.
  void linger() {
    linger_started_ = true;
    {
      std::lock_guard lk(socket_mu_);
      writable_ = false;
    }
    boost::system::error_code ec;
    lowest().shutdown(tcp::socket::shutdown_send, ec);
    linger_timer_.expires_after(kLinger);
    linger_timer_.async_wait([self = this->shared_from_this()](const boost::system::error_code& e) {
      if (!e) self->close_socket();
    });
  }

  void finish(std::string reason) {
    if (finished_) return;
    finished_ = true;
    close_socket();
    linger_timer_.cancel();
    if (!close_reason_.empty()) reason = close_reason_;
    if (session_) {
      session_->on_closed(std::move(reason));
      session_.reset();
    }
  }

  Server& server_;
  Stream stream_;
  asio::steady_timer linger_timer_;
  proto::FrameParser parser_;
  std::shared_ptr<Session> session_;
  std::string remote_;
  size_t read_chunk_ = kMinReadChunk;
  bool sniffed_ = false;
  bool closing_ = false;
  std::shared_ptr<StreamTransport> paused_;  // set while reading waits for resume_read()
  bool linger_started_ = false;
  bool finished_ = false;
  std::string close_reason_;
  std::mutex socket_mu_;  // write_now() against closing the socket
  bool writable_ = true;  // under socket_mu_
  char discard_[512];
};

}  // namespace

void start_tcp_connection(Server& server, tcp::socket socket) {
  std::make_shared<StreamTransport<tcp::socket>>(server, std::move(socket))->start();
}

void start_tls_connection(Server& server, tcp::socket socket, asio::ssl::context& tls) {
  std::make_shared<StreamTransport<asio::ssl::stream<tcp::socket>>>(server, std::move(socket), tls)->start();
}

}  // namespace busgate::gw
