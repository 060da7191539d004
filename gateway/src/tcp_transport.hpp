#pragma once
// TCP adapter: bytes → frames for the Session, frames → bytes on the socket. Also answers peers that
// speak another protocol on the port (HTTP, TLS) with a clear reply and a close.

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <memory>
#include <string>

#include "busgate/protocol/stream.hpp"
#include "transport.hpp"

namespace busgate::gw {

class Server;
class Session;

class TcpTransport final : public Transport, public std::enable_shared_from_this<TcpTransport> {
 public:
  TcpTransport(Server& server, boost::asio::ip::tcp::socket socket);
  void start();
  boost::asio::any_io_executor executor() { return socket_.get_executor(); }

  void write(const std::string& frames, std::function<void(bool ok)> done) override;
  void close(proto::Code reason) override;
  void abort() override;
  void set_max_frame(size_t max_frame) override { parser_.set_max_frame(max_frame); }
  const char* kind() const override { return "tcp"; }
  const std::string& remote() const override { return remote_; }

 private:
  void do_read();
  void on_read(const boost::system::error_code& ec, size_t n);
  void reply_raw_and_close(std::string_view bytes, const char* why);
  void linger();
  void finish(std::string reason);

  Server& server_;
  boost::asio::ip::tcp::socket socket_;
  boost::asio::steady_timer linger_timer_;
  proto::FrameParser parser_;
  std::shared_ptr<Session> session_;
  std::string remote_;
  bool sniffed_ = false;
  bool closing_ = false;
  bool linger_started_ = false;
  bool finished_ = false;
  std::string close_reason_;
  char discard_[4096];
};

}  // namespace busgate::gw
