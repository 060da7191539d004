#pragma once
// TLS contexts for the TLS listener and HTTPS/WSS: TLS 1.2 or newer, optional client CA (mTLS).

#include <boost/asio/ssl/context.hpp>
#include <memory>

#include "config.hpp"

namespace busgate::gw {

// Throws ConfigError naming the tls.* key when a file cannot be used.
std::unique_ptr<boost::asio::ssl::context> make_server_tls_context(const TlsConfig& cfg);

}  // namespace busgate::gw
