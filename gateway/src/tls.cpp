#include "tls.hpp"

#include <openssl/ssl.h>

namespace busgate::gw {

namespace ssl = boost::asio::ssl;

std::unique_ptr<ssl::context> make_server_tls_context(const TlsConfig& cfg) {
  auto ctx = std::make_unique<ssl::context>(ssl::context::tls_server);
  ctx->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                   ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1 | ssl::context::single_dh_use);
  SSL_CTX_set_min_proto_version(ctx->native_handle(), TLS1_2_VERSION);
  boost::system::error_code ec;
  ctx->use_certificate_chain_file(cfg.cert_file, ec);
  if (ec) throw ConfigError("tls.cert_file: cannot use '" + cfg.cert_file + "': " + ec.message());
  ctx->use_private_key_file(cfg.key_file, ssl::context::pem, ec);
  if (ec) throw ConfigError("tls.key_file: cannot use '" + cfg.key_file + "': " + ec.message());
  if (!cfg.client_ca_file.empty()) {
    ctx->load_verify_file(cfg.client_ca_file, ec);
    if (ec) throw ConfigError("tls.client_ca_file: cannot use '" + cfg.client_ca_file + "': " + ec.message());
    ctx->set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert);
  }
  return ctx;
}

}  // namespace busgate::gw
