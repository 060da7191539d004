#pragma once
// The HTTP listener(s): /healthz, /readyz, /metrics, the admin API, /debug and the WebSocket
// endpoint /v1/ws, over HTTP and, when configured, HTTPS. Beast stays out of other headers.

#include <memory>

#include "config.hpp"

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace busgate::gw {

class Server;

class HttpServer {
 public:
  HttpServer(Server& server, boost::asio::io_context& ctx);
  ~HttpServer();
  void start(const Endpoint& ep);                                     // HTTP
  // HTTPS (and WSS), with the server's TLS context (Server::tls_context(), which a reload replaces).
  void start_tls(const Endpoint& ep);
  void stop_accepting();
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace busgate::gw
