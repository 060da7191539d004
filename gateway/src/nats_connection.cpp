#include "nats_connection.hpp"

#include <openssl/ssl.h>
#include <spdlog/spdlog.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/write.hpp>
#include <cstring>

#include "flush_batch.hpp"
#include "config.hpp"

namespace busgate::gw {

namespace asio = boost::asio;
namespace ssl = asio::ssl;

namespace {

constexpr size_t kReadChunk = 256u << 10;

bool is_ip(const std::string& host) {
  boost::system::error_code ec;
  asio::ip::make_address(host, ec);
  return !ec;
}

}  // namespace

NatsConnection::NatsConnection(asio::io_context& io, const NatsLinkOptions& opt, const NatsCreds& creds,
                               NatsServerPool& pool, Events events)
    : io_(io),
      opt_(opt),
      creds_(creds),
      pool_(pool),
      ev_(std::move(events)),
      resolver_(io),
      connect_timer_(io),
      ping_timer_(io),
      retry_timer_(io) {
  if (pool_.any_tls() || !opt_.tls_ca.empty() || !opt_.tls_cert.empty()) tls_ctx_ = make_tls_context();
  rbuf_.resize(kReadChunk);
}

std::unique_ptr<ssl::context> NatsConnection::make_tls_context() const {
  auto c = std::make_unique<ssl::context>(ssl::context::tls_client);
  SSL_CTX_set_min_proto_version(c->native_handle(), TLS1_2_VERSION);
  error_code ec;
  if (!opt_.tls_ca.empty()) {
    c->load_verify_file(opt_.tls_ca, ec);
    if (ec) throw ConfigError("bus.tls.ca: cannot use '" + opt_.tls_ca + "': " + ec.message());
  } else {
    c->set_default_verify_paths(ec);
  }
  if (!opt_.tls_cert.empty()) {
    c->use_certificate_chain_file(opt_.tls_cert, ec);
    if (ec) throw ConfigError("bus.tls.cert: cannot use '" + opt_.tls_cert + "': " + ec.message());
    c->use_private_key_file(opt_.tls_key.empty() ? opt_.tls_cert : opt_.tls_key, ssl::context::pem, ec);
    if (ec) throw ConfigError("bus.tls.key: cannot use '" + opt_.tls_key + "': " + ec.message());
  }
  c->set_verify_mode(ssl::verify_peer);
  return c;
}

void NatsConnection::start() { connect_next(); }

// ------------------------------------------------------------------ connecting

void NatsConnection::connect_next() {
  if (stopping_) return;
  const uint64_t g = gen_;
  current_ = pool_.next();
  handshake_ = std::make_unique<NatsHandshake>(opt_, creds_, current_);
  parser_ = NatsParser{};
  hs_.clear();
  rbeg_ = rend_ = 0;
  tcp_connected_ = false;
  old_tls_ = std::move(tls_);
  old_sock_ = std::move(sock_);
  sock_ = std::make_unique<tcp::socket>(io_);
  connect_timer_.expires_after(std::chrono::milliseconds(opt_.connect_timeout_ms));
  connect_timer_.async_wait([this, g](error_code ec) {
    if (ec || g != gen_) return;
    const std::string what = tcp_connected_ ? handshake_->waiting_for() : std::string("no connection");
    fail(g, what + " within " + std::to_string(opt_.connect_timeout_ms) + " ms");
  });
  resolver_.async_resolve(current_.host, current_.port, [this, g](error_code ec, tcp::resolver::results_type r) {
    if (g != gen_) return;
    if (ec) return fail(g, "cannot resolve " + current_.host + ": " + ec.message());
    asio::async_connect(*sock_, r, [this, g](error_code ec2, const tcp::endpoint&) {
      if (g != gen_) return;
      if (ec2) return fail(g, ec2.message());
      sock_->set_option(tcp::no_delay(true), ec2);
      tcp_connected_ = true;
      handshake_read(g);
    });
  });
}

// Hands the handshake what the server sent, reading more as needed, and does what it says.
void NatsConnection::handshake_read(uint64_t g) {
  for (;;) {
    NatsItem item;
    const NatsParse r = parser_.next(hs_, item);
    if (r == NatsParse::error) return fail(g, handshake_->protocol_error(parser_.error()));
    if (r == NatsParse::need_more) break;
    NatsHandshake::Step step = handshake_->on_item(item);
    hs_.erase(0, parser_.consumed());
    if (step.info) apply_info(*step.info);
    switch (step.next) {
      case NatsHandshake::Next::wait:
        continue;
      case NatsHandshake::Next::start_tls:
        return start_tls(g);
      case NatsHandshake::Next::send:
        return send_connect(g, std::move(step.data));
      case NatsHandshake::Next::ready:
        return on_ready(g);
      case NatsHandshake::Next::fail:
        refused_ = step.refused;
        return fail(g, step.data);
    }
  }
  with_stream([&](auto& s) {
    s.async_read_some(asio::buffer(hs_chunk_), [this, g](error_code ec, size_t n) {
      if (g != gen_) return;
      if (ec) return fail(g, handshake_->read_error(ec.message()));
      hs_.append(hs_chunk_.data(), n);
      handshake_read(g);
    });
  });
}

void NatsConnection::start_tls(uint64_t g) {
  if (!tls_ctx_) {
    try {
      tls_ctx_ = make_tls_context();
    } catch (const std::exception& e) {
      return fail(g, e.what());
    }
  }
  tls_ = std::make_unique<ssl::stream<tcp::socket&>>(*sock_, *tls_ctx_);
  if (!is_ip(current_.host)) SSL_set_tlsext_host_name(tls_->native_handle(), current_.host.c_str());
  tls_->set_verify_callback(ssl::host_name_verification(current_.host));
  tls_->async_handshake(ssl::stream_base::client, [this, g](error_code ec) {
    if (g != gen_) return;
    if (ec) return fail(g, "TLS handshake: " + ec.message());
    NatsHandshake::Step step = handshake_->tls_done();
    if (step.next != NatsHandshake::Next::send) return fail(g, step.data);
    send_connect(g, std::move(step.data));
  });
}

void NatsConnection::send_connect(uint64_t g, std::string msg) {
  auto buf = std::make_shared<std::string>(std::move(msg));
  with_stream([&](auto& s) {
    asio::async_write(s, asio::buffer(*buf), [this, g, buf](error_code ec, size_t) {
      if (g != gen_) return;
      if (ec) return fail(g, "sending CONNECT: " + ec.message());
      handshake_read(g);
    });
  });
}

void NatsConnection::apply_info(const NatsInfo& info) {
  if (info.max_payload > 0) parser_.set_max_payload(info.max_payload);
  for (const auto& added : pool_.learn(info.connect_urls, current_))
    spdlog::info("nats: the cluster announced {}", added);
  if (ev_.info) ev_.info(info);
}

void NatsConnection::on_ready(uint64_t g) {
  connect_timer_.cancel();
  pings_out_ = 0;
  refusals_ = 0;
  last_failure_.clear();
  // Bytes read past the handshake belong to the message stream.
  if (hs_.size() > rbuf_.size()) rbuf_.resize(hs_.size() + kReadChunk);
  std::memcpy(rbuf_.data(), hs_.data(), hs_.size());
  rbeg_ = 0;
  rend_ = hs_.size();
  hs_.clear();
  up_ = true;
  first_attempt_done_ = true;
  const bool again = ever_connected_;
  ever_connected_ = true;
  spdlog::info("nats: connection '{}' {} to {}", opt_.name, again ? "re-established" : "established", current_.text);
  if (ev_.up) ev_.up(tls_ ? -1 : sock_->native_handle(), again, current_);
  if (g != gen_) return;
  schedule_ping(g);
  if (!parse(g)) return;
  read_more(g);
}

void NatsConnection::reset(const std::string& why) { fail(gen_, why); }

void NatsConnection::fail(uint64_t g, const std::string& why) {
  if (g != gen_ || stopping_) return;
  ++gen_;
  connect_timer_.cancel();
  ping_timer_.cancel();
  resolver_.cancel();
  const bool was_up = up_;
  up_ = false;
  if (ev_.down) ev_.down(was_up, current_);
  error_code ec;
  if (sock_) sock_->close(ec);
  if (was_up) {
    spdlog::warn("nats: disconnected from {}: {}", current_.text, why);
  } else if (!first_attempt_done_) {
    first_attempt_done_ = true;
    spdlog::warn("nats: cannot connect to {}: {}; retrying in the background (not ready until connected)",
                 current_.text, why);
    last_failure_ = why;
  } else if (why != last_failure_) {
    spdlog::warn("nats: cannot connect to {}: {}", current_.text, why);
    last_failure_ = why;
  }
  refusals_ = refused_ ? refusals_ + 1 : 0;
  refused_ = false;
  retry_timer_.expires_after(nats_reconnect_delay(refusals_, opt_.reconnect_wait_ms));
  retry_timer_.async_wait([this](error_code e) {
    if (!e) connect_next();
  });
}

void NatsConnection::stop(const std::string& rest) {
  stopping_ = true;
  ++gen_;
  connect_timer_.cancel();
  ping_timer_.cancel();
  retry_timer_.cancel();
  resolver_.cancel();
  const bool was_up = up_;
  up_ = false;
  if (!sock_) return;
  error_code ec;
  if (was_up && !tls_ && !rest.empty()) asio::write(*sock_, asio::buffer(rest), ec);
  sock_->close(ec);
}

// ------------------------------------------------------------------ connected

void NatsConnection::schedule_ping(uint64_t g) {
  ping_timer_.expires_after(std::chrono::milliseconds(opt_.ping_interval_ms));
  ping_timer_.async_wait([this, g](error_code ec) {
    if (ec || g != gen_) return;
    if (pings_out_ >= opt_.max_pings_out)
      return fail(g, "no PONG to the last " + std::to_string(pings_out_) + " PINGs (stale connection)");
    ++pings_out_;
    if (ev_.keepalive) ev_.keepalive();
    schedule_ping(g);
  });
}

void NatsConnection::write(const std::string& data, std::function<void()> done) {
  const uint64_t g = gen_;
  with_stream([&](auto& s) {
    asio::async_write(s, asio::buffer(data), [this, g, done = std::move(done)](error_code ec, size_t) {
      if (g != gen_) return;
      if (ec) return fail(g, "write: " + ec.message());
      done();
    });
  });
}

void NatsConnection::read_more(uint64_t g) {
  if (rbeg_ == rend_) rbeg_ = rend_ = 0;
  if (rend_ == rbuf_.size()) {
    if (rbeg_ > 0) {
      std::memmove(rbuf_.data(), rbuf_.data() + rbeg_, rend_ - rbeg_);
      rend_ -= rbeg_;
      rbeg_ = 0;
    }
    if (rend_ == rbuf_.size()) rbuf_.resize(rbuf_.size() * 2);
  }
  with_stream([&](auto& s) {
    s.async_read_some(asio::buffer(rbuf_.data() + rend_, rbuf_.size() - rend_), [this, g](error_code ec, size_t n) {
      if (g != gen_) return;
      if (ec) return fail(g, ec == asio::error::eof ? std::string("the server closed the connection") : ec.message());
      rend_ += n;
      if (!parse(g)) return;
      read_more(g);
    });
  });
}

// Makes room for a message of `need` bytes starting at rbeg_.
void NatsConnection::reserve_for(size_t need) {
  if (rbeg_ > 0) {
    std::memmove(rbuf_.data(), rbuf_.data() + rbeg_, rend_ - rbeg_);
    rend_ -= rbeg_;
    rbeg_ = 0;
  }
  if (rbuf_.size() < need) rbuf_.resize(need + kReadChunk);
}

// Hands over every complete protocol message in the buffer. False when the connection ended (a
// protocol error from the server: logged, and the link reconnects).
bool NatsConnection::parse(uint64_t g) {
  FlushBatch batch;  // each connection the messages of this read reach is flushed once, at its end
  NatsItem m;
  while (rbeg_ < rend_) {
    const NatsParse r = parser_.next(std::string_view(rbuf_.data() + rbeg_, rend_ - rbeg_), m);
    if (r == NatsParse::need_more) {
      if (const size_t need = parser_.needed(); need > 0 && rbuf_.size() - rbeg_ < need) reserve_for(need);
      break;
    }
    if (r == NatsParse::error) {
      fail(g, "protocol error from the server: " + parser_.error());
      return false;
    }
    rbeg_ += parser_.consumed();
    if (m.op == NatsOp::pong) pings_out_ = 0;
    if (m.op == NatsOp::info) {
      // The parser checked that it is a JSON object; fields the link cannot use are ignored.
      if (auto info = parse_nats_info(m.text)) apply_info(*info);
      continue;
    }
    if (ev_.item) ev_.item(m);
    if (g != gen_) return false;
  }
  return true;
}

}  // namespace busgate::gw
