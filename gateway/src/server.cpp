#include "server.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>

#include "accept_backoff.hpp"
#include "admin_cluster.hpp"
#include "http_server.hpp"
#include "log_text.hpp"
#include "durable.hpp"
#include "memory_bus.hpp"
#include "session.hpp"
#include "tcp_transport.hpp"
#include "tls.hpp"

namespace busgate::gw {

namespace asio = boost::asio;
using asio::ip::tcp;

namespace {
// After the last connection closed: how long the sessions' remaining handlers (final writes,
// cancelled timers) get to run and release them before the I/O threads stop anyway.
constexpr auto kReleaseWait = std::chrono::seconds(2);
}  // namespace

struct Server::Impl {
  explicit Impl(asio::io_context& ctx) : signals(ctx), drain_timer(ctx) {}
  std::unique_ptr<tcp::acceptor> tcp_acceptor;
  std::unique_ptr<tcp::acceptor> tls_acceptor;
  std::unique_ptr<AcceptLoop> tcp_loop;  // after its acceptor: destroyed first
  std::unique_ptr<AcceptLoop> tls_loop;
  // The TLS context of new connections, and those a reload replaced: all outlive the io_contexts
  // (TLS streams in them were made from one).
  mutable std::mutex tls_mu;
  std::shared_ptr<asio::ssl::context> tls;
  std::vector<std::shared_ptr<asio::ssl::context>> retired_tls;
  asio::signal_set signals;
  asio::steady_timer drain_timer;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work0;
};

std::unique_ptr<Bus> make_bus(const GatewayConfig& cfg);  // bus_factory.cpp

Server::Server(GatewayConfig cfg, std::string config_path)
    : cfg_(std::move(cfg)), config_path_(std::move(config_path)) {
  registry_.load(cfg_.tenants);
  metrics_.latency_bounds_us = latency_bounds_us(cfg_.max_request_timeout_ms);
  unsigned n = cfg_.threads ? cfg_.threads : std::max(1u, std::thread::hardware_concurrency());
  for (unsigned i = 0; i < n; ++i) contexts_.push_back(std::make_unique<asio::io_context>(1));
  impl_ = std::make_unique<Impl>(*contexts_[0]);
  bus_ = make_bus(cfg_);
  configure_durable();
}

// Creates or updates every tenant's streams and declared consumers on the bus (idempotent).
void Server::configure_durable() {
  DurableBus* d = bus_->durable();
  if (!d) return;
  std::vector<StreamSpec> streams;
  std::vector<ConsumerSpec> consumers;
  durable_specs(cfg_.tenants, streams, consumers);
  if (!streams.empty())
    spdlog::info("durable: {} streams and {} declared consumers configured on the {} bus", streams.size(),
                 consumers.size(), bus_->kind());
  d->configure_durable(std::move(streams), std::move(consumers));
}

Server::~Server() { teardown(); }

void Server::teardown() {
  if (torn_down_) return;
  torn_down_ = true;
  // 1. No I/O thread runs a handler any more (a no-op after run(), which ends this way).
  for (auto& c : contexts_) c->stop();
  for (auto& t : threads_)
    if (t.joinable()) t.join();
  threads_.clear();
  // 2. The listeners: I/O objects of context 0, destroyed while it exists. Their pending accepts
  //    are destroyed with the contexts, never run.
  std::vector<std::shared_ptr<asio::ssl::context>> tls;
  if (impl_) {
    std::lock_guard lk(impl_->tls_mu);
    tls = std::move(impl_->retired_tls);
    tls.push_back(std::move(impl_->tls));
  }
  http_.reset();
  impl_.reset();
  admin_.reset();  // unsubscribes from the bus; its timers belong to context 0
  // 3. The bus, its threads joined. Until they are, a delivery may still be posted to a session's
  //    context: stopped, it queues the handler and never runs it.
  bus_.reset();
  // 4. The contexts, with the handlers they still hold (and whatever those keep alive).
  contexts_.clear();
}

std::string Server::admin_token_sha256() const {
  std::lock_guard lk(admin_token_mu_);
  return admin_token_sha256_;
}

std::shared_ptr<asio::ssl::context> Server::tls_context() const {
  std::lock_guard lk(impl_->tls_mu);
  return impl_->tls;
}

asio::io_context& Server::next_context() { return *contexts_[rr_.fetch_add(1) % contexts_.size()]; }

static void log_listening(const char* what, const tcp::endpoint& ep) {
  const auto addr = ep.address();
  const std::string host = addr.is_v6() ? "[" + addr.to_string() + "]" : addr.to_string();
  spdlog::info("{} listening on {}:{}", what, host, ep.port());
}

static std::unique_ptr<tcp::acceptor> listen_on(asio::io_context& ctx, const Endpoint& e, const char* what) {
  auto acc = std::make_unique<tcp::acceptor>(ctx);
  tcp::endpoint ep(asio::ip::make_address(e.host), e.port);
  acc->open(ep.protocol());
  acc->set_option(tcp::acceptor::reuse_address(true));
  acc->bind(ep);
  acc->listen(asio::socket_base::max_listen_connections);
  log_listening(what, acc->local_endpoint());
  return acc;
}

void Server::start_tcp() {
  auto& ctx = *contexts_[0];
  if (cfg_.tcp) {
    impl_->tcp_acceptor = listen_on(ctx, *cfg_.tcp, "tcp");
    if (config_path_.empty())
      spdlog::info("connect with: busgate://{}:{} and HELLO auth {{\"method\": \"token\", \"token\": \"{}\"}}",
                   cfg_.tcp->host, impl_->tcp_acceptor->local_endpoint().port(), kDevToken);
    impl_->tcp_loop = std::make_unique<AcceptLoop>(
        *impl_->tcp_acceptor, "tcp", [this]() -> asio::io_context& { return next_context(); },
        [this](tcp::socket s) { start_tcp_connection(*this, std::move(s)); });
    impl_->tcp_loop->start();
  }
  if (cfg_.tls_files.enabled()) impl_->tls = make_server_tls_context(cfg_.tls_files);
  if (cfg_.tls) {
    impl_->tls_acceptor = listen_on(ctx, *cfg_.tls, "tls");
    impl_->tls_loop = std::make_unique<AcceptLoop>(
        *impl_->tls_acceptor, "tls", [this]() -> asio::io_context& { return next_context(); },
        [this](tcp::socket s) { start_tls_connection(*this, std::move(s), *tls_context()); });
    impl_->tls_loop->start();
  }
}

namespace {
thread_local const void* t_current_context = nullptr;
}
const void* current_io_context() { return t_current_context; }

int Server::run() {
  try {
    admin_ = std::make_shared<AdminCluster>(*this, *contexts_[0]);
    admin_->start();
    start_tcp();
    if (cfg_.http || cfg_.https) {
      http_ = std::make_unique<HttpServer>(*this, *contexts_[0]);
      if (cfg_.http) http_->start(*cfg_.http);
      if (cfg_.https) http_->start_tls(*cfg_.https);
    }
  } catch (const std::exception& e) {
    spdlog::critical("cannot start listeners: {}", e.what());
    return 1;
  }
  impl_->signals.add(SIGTERM);
  impl_->signals.add(SIGINT);
  impl_->signals.add(SIGHUP);
  struct OnSignal {
    Server* self;
    void operator()(const boost::system::error_code& ec, int sig) const {
      if (ec) return;
      if (sig == SIGHUP) {
        const auto err = self->reload();
        if (!err.empty()) spdlog::error("reload failed, keeping the current tenants: {}", err);
      } else {
        spdlog::info("signal {}: draining", sig == SIGTERM ? "SIGTERM" : "SIGINT");
        self->begin_drain();
      }
      self->impl_->signals.async_wait(OnSignal{self});
    }
  };
  impl_->signals.async_wait(OnSignal{this});
  spdlog::info("busgate node {} ready (bus: {}, {} threads)", cfg_.node_id, bus_->kind(), contexts_.size());

  for (size_t i = 1; i < contexts_.size(); ++i) {
    threads_.emplace_back([ctx = contexts_[i].get()] {
      t_current_context = static_cast<asio::execution_context*>(ctx);
      auto guard = asio::make_work_guard(*ctx);
      ctx->run();
    });
  }
  impl_->work0.emplace(contexts_[0]->get_executor());
  t_current_context = static_cast<asio::execution_context*>(contexts_[0].get());
  contexts_[0]->run();
  t_current_context = nullptr;
  teardown();
  spdlog::info("busgate node {} stopped", cfg_.node_id);
  return 0;
}

void Server::add_session(const std::shared_ptr<Session>& s) {
  std::lock_guard lk(sessions_mu_);
  sessions_[s->id()] = s;
}

void Server::remove_session(uint64_t id) {
  std::lock_guard lk(sessions_mu_);
  const auto it = sessions_.find(id);
  if (it == sessions_.end()) return;
  retired_.push_back(std::move(it->second));
  sessions_.erase(it);
  if (retired_.size() >= retired_prune_at_) {
    std::erase_if(retired_, [](const std::weak_ptr<Session>& w) { return w.expired(); });
    retired_prune_at_ = std::max<size_t>(64, 2 * retired_.size());
  }
}

bool Server::sessions_released() {
  std::lock_guard lk(sessions_mu_);
  std::erase_if(retired_, [](const std::weak_ptr<Session>& w) { return w.expired(); });
  return sessions_.empty() && retired_.empty();
}

std::vector<std::shared_ptr<Session>> Server::sessions() const {
  std::vector<std::shared_ptr<Session>> out;
  std::lock_guard lk(sessions_mu_);
  for (const auto& [id, w] : sessions_)
    if (auto s = w.lock()) out.push_back(std::move(s));
  return out;
}

std::shared_ptr<Session> Server::find_session(uint64_t id) const {
  std::lock_guard lk(sessions_mu_);
  auto it = sessions_.find(id);
  return it == sessions_.end() ? nullptr : it->second.lock();
}

void Server::add_refusal(const Refusal& r) {
  refusals_.add(r);
  spdlog::info("refusal {} set: {} '{}' of tenant {} for {} ms (connection {})", r.id, by_name(r.by),
               r.by == Refusal::By::token ? r.value.substr(0, 16) : log_text(r.value, 160), r.tenant,
               std::chrono::duration_cast<std::chrono::milliseconds>(r.until - std::chrono::steady_clock::now()).count(),
               r.connection);
  if (admin_) admin_->publish_refusal(r);
}

bool Server::lift_refusal(const std::string& id) {
  const bool had = refusals_.remove(id);
  if (had) spdlog::info("refusal {} lifted", id);
  if (admin_) admin_->publish_lift(id);  // another node may hold it even when this one does not
  return had;
}

bool Server::close_session(uint64_t id) {
  std::shared_ptr<Session> s;
  {
    std::lock_guard lk(sessions_mu_);
    auto it = sessions_.find(id);
    if (it != sessions_.end()) s = it->second.lock();
  }
  if (!s) return false;
  s->shutdown(proto::Code::closed_by_admin, "an operator closed this connection");
  return true;
}

std::string Server::reload() {
  if (config_path_.empty()) return "the gateway runs without a config file (--dev); nothing to reload";
  std::lock_guard reloading(reload_mu_);
  GatewayConfig fresh;
  std::shared_ptr<asio::ssl::context> tls;
  // The files the file's tls section names; without one, those the gateway started with (--tls-cert).
  const TlsConfig* tls_files = nullptr;
  try {
    fresh = load_config_file(config_path_);
    // Listeners are not reloaded: a certificate is re-read only when a TLS listener runs.
    if ((cfg_.tls || cfg_.https) && tls_context()) {
      tls_files = fresh.tls_files.enabled() ? &fresh.tls_files : &cfg_.tls_files;
      tls = make_server_tls_context(*tls_files);
    }
  } catch (const std::exception& e) {
    return e.what();
  }
  registry_.load(fresh.tenants);
  cfg_.tenants = fresh.tenants;
  auth_throttle_.reconfigure(fresh.auth_failures_burst, fresh.auth_failures_per_sec);
  configure_durable();
  const auto all = sessions();
  for (const auto& s : all) s->recheck_auth();
  spdlog::info("reloaded {} tenants from {} ({} connections rechecked)", fresh.tenants.size(), config_path_,
               all.size());
  {
    std::lock_guard lk(admin_token_mu_);
    if (fresh.admin_token_sha256 != admin_token_sha256_)
      spdlog::info("reload: {}", fresh.admin_token_sha256.empty() ? "admin API disabled (no admin token)"
                                 : admin_token_sha256_.empty()    ? "admin API enabled"
                                                                  : "admin token replaced");
    admin_token_sha256_ = fresh.admin_token_sha256;
  }
  if (tls) {
    {
      std::lock_guard lk(impl_->tls_mu);
      impl_->retired_tls.push_back(std::move(impl_->tls));
      impl_->tls = std::move(tls);
    }
    spdlog::info("reload: new TLS connections use the certificate {} and the key {}{}", tls_files->cert_file,
                 tls_files->key_file,
                 tls_files->client_ca_file.empty() ? "" : " (client CA " + tls_files->client_ca_file + ")");
  }
  return {};
}

void Server::begin_drain() {
  asio::post(*contexts_[0], [this] {
    if (draining_.exchange(true)) return;
    if (impl_->tcp_loop) impl_->tcp_loop->close();
    if (impl_->tls_loop) impl_->tls_loop->close();
    if (http_) http_->stop_accepting();
    drain_deadline_ = std::chrono::steady_clock::now() + std::chrono::milliseconds(cfg_.drain_timeout_ms);
    const auto all = sessions();
    spdlog::info("drain: GOAWAY to {} connections, deadline {} ms", all.size(), cfg_.drain_timeout_ms);
    for (const auto& s : all) s->goaway(cfg_.goaway_delay_ms);
    drain_tick();
  });
}

void Server::stop_io() {
  impl_->work0.reset();
  if (http_) http_->stop();
  for (auto& c : contexts_) c->stop();
}

void Server::drain_tick() {
  const auto now = std::chrono::steady_clock::now();
  const auto left = sessions();
  if (left.empty()) {
    // Every connection is closed; the I/O threads go on until the sessions are destroyed too (the
    // bus, stopped after them, must not outlive one that still refers to it).
    if (!release_deadline_) {
      spdlog::info("drain: every connection closed");
      release_deadline_ = now + kReleaseWait;
    }
    if (sessions_released()) return stop_io();
    if (now >= *release_deadline_) {
      spdlog::warn("drain: closed connections still held after {} ms; stopping",
                   std::chrono::duration_cast<std::chrono::milliseconds>(kReleaseWait).count());
      return stop_io();
    }
  } else if (now >= drain_deadline_) {
    if (drain_forced_) {
      spdlog::warn("drain: {} connections did not close; stopping", left.size());
      return stop_io();
    }
    drain_forced_ = true;
    spdlog::warn("drain: deadline reached, closing {} connections", left.size());
    for (const auto& s : left) s->shutdown(proto::Code::shutting_down, "drain deadline reached");
    drain_deadline_ = now + std::chrono::seconds(2);  // then give the final frames a moment
  }
  impl_->drain_timer.expires_after(std::chrono::milliseconds(20));
  impl_->drain_timer.async_wait([this](const boost::system::error_code& ec) {
    if (!ec) drain_tick();
  });
}

}  // namespace busgate::gw
