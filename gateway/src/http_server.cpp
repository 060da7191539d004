#include "http_server.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "server.hpp"

namespace busgate::gw {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using asio::ip::tcp;

namespace {

class HttpSession : public std::enable_shared_from_this<HttpSession> {
 public:
  HttpSession(Server& server, tcp::socket sock) : server_(server), stream_(std::move(sock)) {}
  void start() { do_read(); }

 private:
  void do_read() {
    req_ = {};
    stream_.expires_after(std::chrono::seconds(30));
    http::async_read(stream_, buf_, req_, beast::bind_front_handler(&HttpSession::on_read, shared_from_this()));
  }

  void on_read(beast::error_code ec, size_t) {
    if (ec) return close();
    auto res = std::make_shared<http::response<http::string_body>>(route());
    res->keep_alive(req_.keep_alive());
    res->prepare_payload();
    http::async_write(stream_, *res, [self = shared_from_this(), res](beast::error_code e, size_t) {
      if (e || !res->keep_alive()) return self->close();
      self->do_read();
    });
  }

  http::response<http::string_body> route() {
    http::response<http::string_body> res{http::status::ok, req_.version()};
    res.set(http::field::server, "busgate");
    res.set(http::field::content_type, "text/plain; charset=utf-8");
    const auto target = std::string(req_.target().substr(0, req_.target().find('?')));
    if (req_.method() != http::verb::get && req_.method() != http::verb::head) {
      res.result(http::status::method_not_allowed);
      res.body() = "method not allowed\n";
    } else if (target == "/healthz") {
      res.body() = "ok\n";
    } else if (target == "/readyz") {
      const bool ready = server_.ready();
      res.result(ready ? http::status::ok : http::status::service_unavailable);
      res.body() = ready ? "ready\n" : (server_.draining() ? "draining\n" : "bus unavailable\n");
    } else {
      res.result(http::status::not_found);
      res.body() = "not found: " + target + "\n";
    }
    return res;
  }

  void close() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
  }

  Server& server_;
  beast::tcp_stream stream_;
  beast::flat_buffer buf_;
  http::request<http::string_body> req_;
};

}  // namespace

struct HttpServer::Impl {
  Impl(Server& s, asio::io_context& c) : server(s), ctx(c), acceptor(c) {}
  Server& server;
  asio::io_context& ctx;
  tcp::acceptor acceptor;

  void accept() {
    acceptor.async_accept(server.next_context(), [this](beast::error_code ec, tcp::socket sock) {
      if (ec == asio::error::operation_aborted || !acceptor.is_open()) return;
      if (!ec) {
        auto s = std::make_shared<HttpSession>(server, std::move(sock));
        s->start();
      }
      accept();
    });
  }
};

HttpServer::HttpServer(Server& server, asio::io_context& ctx) : impl_(std::make_unique<Impl>(server, ctx)) {}
HttpServer::~HttpServer() = default;

void HttpServer::start(const Endpoint& ep) {
  tcp::endpoint endpoint(asio::ip::make_address(ep.host), ep.port);
  auto& acc = impl_->acceptor;
  acc.open(endpoint.protocol());
  acc.set_option(tcp::acceptor::reuse_address(true));
  acc.bind(endpoint);
  acc.listen(asio::socket_base::max_listen_connections);
  const auto local = acc.local_endpoint();
  spdlog::info("http listening on {}:{}", local.address().to_string(), local.port());
  impl_->accept();
}

void HttpServer::stop_accepting() {}  // health and readiness stay reachable while draining

void HttpServer::stop() {
  beast::error_code ec;
  impl_->acceptor.close(ec);
}

}  // namespace busgate::gw
