#pragma once
// The busgate TCP listener's connections, plain or TLS: bytes → frames for the Session, frames →
// bytes on the socket. Plain connections also answer peers that speak another protocol (HTTP, TLS)
// with a clear reply and a close.

#include <boost/asio/ip/tcp.hpp>

namespace boost::asio::ssl {
class context;
}

namespace busgate::gw {

class Server;

// Both run a Session on the socket's executor; call them on that executor.
void start_tcp_connection(Server& server, boost::asio::ip::tcp::socket socket);
void start_tls_connection(Server& server, boost::asio::ip::tcp::socket socket, boost::asio::ssl::context& tls);

}  // namespace busgate::gw
