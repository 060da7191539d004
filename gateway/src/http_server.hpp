#pragma once
// The HTTP listener(s): /healthz, /readyz, /metrics, the admin API, /debug and the WebSocket
// endpoint /v1/ws, over HTTP and, when configured, HTTPS. Beast stays out of other headers.

#include <memory>

#include "config.hpp"

namespace boost::asio {
class io_context;
namespace ssl {
class context;
}
}  // namespace boost::asio

namespace busgate::gw {

class Server;

class HttpServer {
 public:
  HttpServer(Server& server, boost::asio::io_context& ctx);
  ~HttpServer();
  void start(const Endpoint& ep);                                     // HTTP
  void start_tls(const Endpoint& ep, boost::asio::ssl::context& tls);  // HTTPS (and WSS)
  void stop_accepting();
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace busgate::gw
