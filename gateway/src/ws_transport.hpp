#pragma once
// WebSocket adapter (RFC 6455, Boost.Beast): one busgate frame per message; subprotocol
// busgate.v1 carries msgpack bodies in binary messages, busgate.v1.json the JSON mapping in text.

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <boost/beast/http/string_body.hpp>
#include <memory>
#include <string>

#include "transport.hpp"

namespace busgate::gw {

class Server;

// The subprotocol to select from a Sec-WebSocket-Protocol offer, or "" when none is supported.
std::string select_subprotocol(std::string_view offered);

// Takes over an upgraded HTTP connection (the request has been read) and runs a Session on it.
void start_websocket(Server& server, boost::asio::ip::tcp::socket socket,
                     boost::beast::http::request<boost::beast::http::string_body> req, std::string subprotocol);
// The same over TLS (wss://): takes over the HTTPS stream after its TLS handshake.
void start_websocket(Server& server, boost::beast::ssl_stream<boost::beast::tcp_stream> stream,
                     boost::beast::http::request<boost::beast::http::string_body> req, std::string subprotocol);

}  // namespace busgate::gw
