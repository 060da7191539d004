#pragma once
// The HTTP listener: health and readiness endpoints (later also metrics, admin API, WebSocket and
// the debug console). Kept out of other headers so Beast is compiled in one place.

#include <memory>

#include "config.hpp"

namespace boost::asio {
class io_context;
}

namespace busgate::gw {

class Server;

class HttpServer {
 public:
  HttpServer(Server& server, boost::asio::io_context& ctx);
  ~HttpServer();
  void start(const Endpoint& ep);
  void stop_accepting();
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace busgate::gw
