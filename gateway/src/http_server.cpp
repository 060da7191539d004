#include "http_server.hpp"

#include <openssl/crypto.h>
#include <spdlog/spdlog.h>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/beast/websocket/rfc6455.hpp>
#include <nlohmann/json.hpp>

#include "accept_backoff.hpp"
#include "admin_api.hpp"
#include "console_page.hpp"
#include "metrics_text.hpp"
#include "server.hpp"
#include "session.hpp"
#include "ws_transport.hpp"

namespace busgate::gw {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using asio::ip::tcp;
using json = nlohmann::ordered_json;

namespace {

std::string_view sv(beast::string_view s) { return {s.data(), s.size()}; }

template <class Stream>
constexpr bool kTls = !std::is_same_v<Stream, beast::tcp_stream>;

// One HTTP connection: plain (beast::tcp_stream) or HTTPS (beast::ssl_stream<beast::tcp_stream>).
template <class Stream>
class HttpSession : public std::enable_shared_from_this<HttpSession<Stream>> {
 public:
  template <class... Args>
  HttpSession(Server& server, Args&&... args) : server_(server), stream_(std::forward<Args>(args)...) {}

  void start() {
    if constexpr (kTls<Stream>) {
      beast::get_lowest_layer(stream_).expires_after(std::chrono::seconds(10));
      stream_.async_handshake(asio::ssl::stream_base::server, [self = this->shared_from_this()](beast::error_code ec) {
        if (ec) return self->close();
        self->do_read();
      });
    } else {
      do_read();
    }
  }

 private:
  void do_read() {
    parser_.emplace();
    parser_->body_limit(64 * 1024);
    beast::get_lowest_layer(stream_).expires_after(std::chrono::seconds(30));
    http::async_read(stream_, buf_, *parser_,
                     [self = this->shared_from_this()](beast::error_code ec, size_t n) { self->on_read(ec, n); });
  }

  void on_read(beast::error_code ec, size_t) {
    if (ec) return close();
    req_ = parser_->release();
    if (target() == "/v1/ws") return upgrade();
    auto routed = route();
    if (!routed) return;  // an admin request, answered by answer_admin()
    send(std::make_shared<http::response<http::string_body>>(std::move(*routed)));
  }

  void send(std::shared_ptr<http::response<http::string_body>> res) {
    res->keep_alive(req_.keep_alive());
    res->prepare_payload();
    http::async_write(stream_, *res, [self = this->shared_from_this(), res](beast::error_code e, size_t) {
      if (e || !res->keep_alive()) return self->close();
      self->do_read();
    });
  }

  std::string target() const {
    const std::string_view t = sv(req_.target());
    return std::string(t.substr(0, t.find('?')));
  }

  void upgrade() {
    if (!beast::websocket::is_upgrade(req_)) return reply(http::status::upgrade_required, "use a WebSocket upgrade\n");
    const auto sp = select_subprotocol(sv(req_[http::field::sec_websocket_protocol]));
    if (sp.empty())
      return reply(http::status::bad_request,
                   "offer the subprotocol busgate.v1 (binary) or busgate.v1.json (text) in Sec-WebSocket-Protocol\n");
    if (server_.draining()) return reply(http::status::service_unavailable, "draining\n");
    beast::get_lowest_layer(stream_).expires_never();
    if constexpr (kTls<Stream>) start_websocket(server_, std::move(stream_), std::move(req_), sp);
    else start_websocket(server_, stream_.release_socket(), std::move(req_), sp);
  }

  void reply(http::status st, std::string body) {
    auto res = std::make_shared<http::response<http::string_body>>(st, req_.version());
    res->set(http::field::server, "busgate");
    res->set(http::field::content_type, "text/plain; charset=utf-8");
    res->body() = std::move(body);
    res->keep_alive(false);
    res->prepare_payload();
    http::async_write(stream_, *res, [self = this->shared_from_this(), res](beast::error_code, size_t) { self->close(); });
  }

  bool admin_authorized(const std::string& digest) const {
    if (digest.empty()) return false;
    const std::string_view auth = sv(req_[http::field::authorization]);
    constexpr std::string_view kBearer = "Bearer ";
    if (!auth.starts_with(kBearer)) return false;
    const std::string presented = sha256_hex(auth.substr(kBearer.size()));
    return CRYPTO_memcmp(presented.data(), digest.data(), digest.size()) == 0;
  }

  std::optional<http::response<http::string_body>> route() {
    http::response<http::string_body> res{http::status::ok, req_.version()};
    res.set(http::field::server, "busgate");
    res.set(http::field::content_type, "text/plain; charset=utf-8");
    const std::string t = target();
    const bool get = req_.method() == http::verb::get || req_.method() == http::verb::head;
    auto json_reply = [&](http::status st, const json& j) {
      res.result(st);
      res.set(http::field::content_type, "application/json");
      res.body() = j.dump(2) + "\n";
    };
    if (t == "/healthz" && get) {
      res.body() = "ok\n";
    } else if (t == "/readyz" && get) {
      const bool ready = server_.ready();
      res.result(ready ? http::status::ok : http::status::service_unavailable);
      const std::string why = server_.bus().not_ready_reason();
      res.body() = ready                ? "ready\n"
                   : server_.draining() ? "draining\n"
                   : why.empty()        ? "bus unavailable\n"
                                        : why + "\n";
    } else if (t == "/metrics" && get) {
      res.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
      res.body() = render_metrics(server_);
    } else if ((t == "/debug" || t == "/debug/") && get && server_.config().debug_console) {
      res.set(http::field::content_type, "text/html; charset=utf-8");
      res.set(http::field::cache_control, "no-store");
      res.body() = std::string(console_page());
    } else if (t.starts_with("/admin/")) {
      const std::string digest = server_.admin_token_sha256();  // a reload may replace it
      if (digest.empty()) {
        json_reply(http::status::forbidden, {{"error", "the admin API is disabled: set admin.token_sha256"}});
      } else if (!admin_authorized(digest)) {
        res.set(http::field::www_authenticate, "Bearer realm=\"busgate admin\"");
        json_reply(http::status::unauthorized, {{"error", "send Authorization: Bearer <admin token>"}});
      } else {
        const std::string_view full = sv(req_.target());
        const auto q = full.find('?');
        // Answered on another thread, possibly later (a cluster-wide view waits for other nodes).
        handle_admin(server_, sv(req_.method_string()), t, q == std::string_view::npos ? "" : full.substr(q + 1),
                     req_.body(), [self = this->shared_from_this()](int status, AdminJson body) {
                       auto ex = self->stream_.get_executor();
                       asio::post(ex, [self, status, body = std::move(body)] { self->answer_admin(status, body); });
                     });
        return std::nullopt;
      }
    } else {
      res.result(http::status::not_found);
      res.body() = "not found: " + t + "\n";
    }
    return res;
  }

  void answer_admin(int status, const AdminJson& body) {
    auto res = std::make_shared<http::response<http::string_body>>(static_cast<http::status>(status), req_.version());
    res->set(http::field::server, "busgate");
    res->set(http::field::content_type, "application/json");
    res->body() = body.dump(2) + "\n";
    send(std::move(res));
  }

  void close() {
    beast::error_code ec;
    beast::get_lowest_layer(stream_).socket().shutdown(tcp::socket::shutdown_send, ec);
  }

  Server& server_;
  Stream stream_;
  beast::flat_buffer buf_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::request<http::string_body> req_;
};

}  // namespace

struct HttpServer::Impl {
  Impl(Server& s, asio::io_context& c) : server(s), ctx(c) {}
  Server& server;
  asio::io_context& ctx;
  std::vector<std::unique_ptr<tcp::acceptor>> acceptors;
  std::vector<std::unique_ptr<AcceptLoop>> loops;  // after the acceptors: destroyed first

  tcp::acceptor& listen(const Endpoint& ep, const char* what) {
    tcp::endpoint endpoint(asio::ip::make_address(ep.host), ep.port);
    auto acc = std::make_unique<tcp::acceptor>(ctx);
    acc->open(endpoint.protocol());
    acc->set_option(tcp::acceptor::reuse_address(true));
    acc->bind(endpoint);
    acc->listen(asio::socket_base::max_listen_connections);
    const auto local = acc->local_endpoint();
    spdlog::info("{} listening on {}:{}", what, local.address().to_string(), local.port());
    acceptors.push_back(std::move(acc));
    return *acceptors.back();
  }

  // With `tls`, each connection takes the server's current TLS context (a reload replaces it).
  void accept(tcp::acceptor& acc, const char* what, bool tls) {
    loops.push_back(std::make_unique<AcceptLoop>(
        acc, what, [this]() -> asio::io_context& { return server.next_context(); },
        [this, tls](tcp::socket sock) {
          using Tls = beast::ssl_stream<beast::tcp_stream>;
          if (tls) {
            std::make_shared<HttpSession<Tls>>(server, std::move(sock), *server.tls_context())->start();
          } else {
            std::make_shared<HttpSession<beast::tcp_stream>>(server, std::move(sock))->start();
          }
        }));
    loops.back()->start();
  }
};

HttpServer::HttpServer(Server& server, asio::io_context& ctx) : impl_(std::make_unique<Impl>(server, ctx)) {
  if (server.admin_token_sha256().empty()) spdlog::info("admin API disabled (no admin.token_sha256)");
}
HttpServer::~HttpServer() = default;

void HttpServer::start(const Endpoint& ep) { impl_->accept(impl_->listen(ep, "http"), "http", false); }

void HttpServer::start_tls(const Endpoint& ep) {
  impl_->accept(impl_->listen(ep, "https"), "https", true);
}

void HttpServer::stop_accepting() {}  // health, readiness and metrics stay reachable while draining

void HttpServer::stop() {
  for (auto& l : impl_->loops) l->close();
}

}  // namespace busgate::gw
