#include "ws_transport.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/post.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>
#include <deque>

#include "busgate/protocol/frame.hpp"
#include "busgate/protocol/json.hpp"
#include "server.hpp"
#include "session.hpp"

namespace busgate::gw {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
using proto::Code;

std::string select_subprotocol(std::string_view offered) {
  // A comma-separated list; the first one we support wins.
  size_t pos = 0;
  while (pos <= offered.size()) {
    size_t comma = offered.find(',', pos);
    if (comma == std::string_view::npos) comma = offered.size();
    std::string_view p = offered.substr(pos, comma - pos);
    while (!p.empty() && (p.front() == ' ' || p.front() == '\t')) p.remove_prefix(1);
    while (!p.empty() && (p.back() == ' ' || p.back() == '\t')) p.remove_suffix(1);
    if (p == "busgate.v1" || p == "busgate.v1.json") return std::string(p);
    pos = comma + 1;
  }
  return {};
}

namespace {

websocket::close_code close_code_for(Code c) {
  switch (c) {
    case Code::ok: return websocket::close_code::normal;
    case Code::shutting_down: return websocket::close_code::going_away;
    case Code::malformed_frame:
    case Code::handshake_required:
    case Code::unsupported_version:
    case Code::not_busgate: return websocket::close_code::protocol_error;
    case Code::frame_too_large: return websocket::close_code::too_big;
    case Code::internal_error: return websocket::close_code::internal_error;
    default: return websocket::close_code::policy_error;
  }
}

template <class NextLayer>
class WsTransport final : public Transport, public std::enable_shared_from_this<WsTransport<NextLayer>> {
 public:
  WsTransport(Server& server, NextLayer next, bool json) : server_(server), ws_(std::move(next)), json_(json) {
    beast::error_code ec;
    const auto ep = socket().remote_endpoint(ec);
    remote_ = ec ? std::string("?") : ep.address().to_string() + ":" + std::to_string(ep.port());
    socket().set_option(asio::ip::tcp::no_delay(true), ec);
  }

  void start(http::request<http::string_body> req, std::string subprotocol) {
    ws_.set_option(websocket::stream_base::timeout::suggested(beast::role_type::server));
    ws_.set_option(websocket::stream_base::decorator([sp = std::move(subprotocol)](websocket::response_type& res) {
      res.set(http::field::server, "busgate");
      res.set(http::field::sec_websocket_protocol, sp);
    }));
    ws_.read_message_max(0);  // the size limit is enforced below, so an ERR can precede the close
    ws_.auto_fragment(false);
    req_ = std::move(req);
    ws_.async_accept(req_, [self = this->shared_from_this()](beast::error_code ec) {
      if (ec) return self->finish("websocket handshake failed: " + ec.message());
      self->session_ =
          std::make_shared<Session>(self->server_, self->ws_.get_executor(), self->server_.next_session_id());
      self->session_->attach(self.get());
      self->server_.add_session(self->session_);
      self->do_read();
    });
  }

  bool byte_stream() const override { return false; }
  void write(std::string_view frames, std::function<void(bool)> done) override {
    // Split the batch of length-prefixed frames into one message each.
    pending_.clear();
    size_t pos = 0;
    while (pos + 4 <= frames.size()) {
      const auto* p = reinterpret_cast<const unsigned char*>(frames.data() + pos);
      const size_t len = (size_t{p[0]} << 24) | (size_t{p[1]} << 16) | (size_t{p[2]} << 8) | size_t{p[3]};
      const std::string_view body(frames.data() + pos + 4, len);
      if (json_) {
        auto text = proto::body_to_json_text(body);
        pending_.push_back(text ? std::move(*text) : std::string("[10,600,\"unencodable frame\"]"));
      } else {
        pending_.emplace_back(body);
      }
      pos += 4 + len;
    }
    done_ = std::move(done);
    ws_.text(json_);
    write_next();
  }

  void close(Code reason) override {
    if (closing_) return;
    closing_ = true;
    websocket::close_reason cr(close_code_for(reason));
    if (reason != Code::ok) cr.reason = std::string(proto::code_name(reason));
    ws_.async_close(cr, [self = this->shared_from_this()](beast::error_code) {
      // the read loop sees the peer's Close (or an error) and finishes
    });
    resume_read();
  }

  void abort() override {
    closing_ = true;
    beast::error_code ec;
    socket().close(ec);
    resume_read();
  }

  void resume_read() override {
    if (!paused_) return;
    const auto self = std::move(paused_);
    do_read();
  }

  void set_max_frame(size_t max_frame) override { max_frame_ = max_frame; }
  int native_fd() override { return socket().native_handle(); }
  const char* kind() const override {
    constexpr bool tls = !std::is_same_v<NextLayer, beast::tcp_stream>;
    return json_ ? (tls ? "wss-json" : "ws-json") : (tls ? "wss" : "ws");
  }
  const std::string& remote() const override { return remote_; }

 private:
  asio::ip::tcp::socket& socket() { return beast::get_lowest_layer(ws_).socket(); }

  void do_read() {
    ws_.async_read_some(buf_, 64 * 1024, [self = this->shared_from_this()](beast::error_code ec, size_t) {
      self->on_read(ec);
    });
  }

  void on_read(beast::error_code ec) {
    if (ec) {
      if (ec == websocket::error::closed) return finish("peer closed");
      return finish(ec.message());
    }
    if (buf_.size() > max_frame_) {
      session_->fail(Code::frame_too_large,
                     "message above the maximum of " + std::to_string(max_frame_) + " bytes");
      buf_.consume(buf_.size());
      return drain_reads();
    }
    if (!ws_.is_message_done()) return do_read();
    const std::string_view msg(static_cast<const char*>(buf_.data().data()), buf_.size());
    const bool is_text = ws_.got_text();
    if (msg.empty() || is_text != json_) {
      session_->fail(Code::malformed_frame, msg.empty() ? "empty message"
                                                        : (json_ ? "binary message under busgate.v1.json"
                                                                 : "text message under busgate.v1"));
    } else if (json_) {
      std::string body, why;
      if (proto::json_to_body(msg, body, &why) != Code::ok) session_->fail(Code::malformed_frame, why);
      else session_->on_frame(body);
    } else {
      session_->on_frame(msg);
    }
    buf_.consume(buf_.size());
    const bool go_on = session_->on_batch_end();
    if (session_->state() == Session::State::closed) return;
    if (!go_on && !closing_) {
      paused_ = this->shared_from_this();  // no read outstanding: this keeps the connection alive
      return;
    }
    do_read();
  }

  // After a fatal error, keep reading (and discarding) until the Close handshake ends.
  void drain_reads() {
    ws_.async_read_some(buf_, 64 * 1024, [self = this->shared_from_this()](beast::error_code ec, size_t) {
      self->buf_.consume(self->buf_.size());
      if (ec) return self->finish(ec == websocket::error::closed ? "peer closed" : ec.message());
      self->drain_reads();
    });
  }

  void write_next() {
    if (pending_.empty()) {
      auto done = std::move(done_);
      return done(true);
    }
    ws_.async_write(asio::buffer(pending_.front()), [self = this->shared_from_this()](beast::error_code ec, size_t) {
      if (ec) {
        auto done = std::move(self->done_);
        return done(false);
      }
      self->pending_.pop_front();
      self->write_next();
    });
  }

  void finish(std::string reason) {
    if (finished_) return;
    finished_ = true;
    if (session_) {
      session_->on_closed(std::move(reason));
      session_.reset();
    }
  }

  Server& server_;
  websocket::stream<NextLayer> ws_;
  bool json_;
  http::request<http::string_body> req_;
  std::shared_ptr<Session> session_;
  beast::flat_buffer buf_;
  std::deque<std::string> pending_;
  std::function<void(bool)> done_;
  size_t max_frame_ = proto::kPreHandshakeMaxFrame;
  std::string remote_;
  bool closing_ = false;
  std::shared_ptr<WsTransport> paused_;  // set while reading waits for resume_read()
  bool finished_ = false;
};

}  // namespace

void start_websocket(Server& server, asio::ip::tcp::socket socket, http::request<http::string_body> req,
                     std::string subprotocol) {
  const bool json = subprotocol == "busgate.v1.json";
  auto t = std::make_shared<WsTransport<beast::tcp_stream>>(server, beast::tcp_stream(std::move(socket)), json);
  t->start(std::move(req), std::move(subprotocol));
}

void start_websocket(Server& server, beast::ssl_stream<beast::tcp_stream> stream, http::request<http::string_body> req,
                     std::string subprotocol) {
  const bool json = subprotocol == "busgate.v1.json";
  beast::get_lowest_layer(stream).expires_never();
  auto t = std::make_shared<WsTransport<beast::ssl_stream<beast::tcp_stream>>>(server, std::move(stream), json);
  t->start(std::move(req), std::move(subprotocol));
}

}  // namespace busgate::gw
