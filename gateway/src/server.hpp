#pragma once
// The gateway process: io_context pool, listeners, the session registry, signals, drain and reload.
//
// Teardown order (teardown(), run at the end of run() and by the destructor): the listeners stop
// accepting and every connection is closed (the drain), the I/O threads stop once every Session
// object is gone, then the listeners and the HTTP server are destroyed, then the bus (its own
// threads joined: the NATS link, JetStream's ticker, the memory bus's durable timer), and only then
// the io_contexts, so that no bus thread can post into a destroyed context.

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "admin_refusals.hpp"
#include "auth_throttle.hpp"
#include "bus.hpp"
#include "config.hpp"
#include "metrics.hpp"
#include "tenancy.hpp"

namespace boost::asio {
class io_context;
namespace ssl {
class context;
}
}  // namespace boost::asio

namespace busgate::gw {

class Session;
class HttpServer;
class AdminCluster;

// The io_context (as its execution_context) that the calling thread runs; nullptr on other threads.
const void* current_io_context();

class Server {
 public:
  Server(GatewayConfig cfg, std::string config_path);
  ~Server();
  // Runs until drained (SIGTERM/SIGINT) and returns the process exit code.
  int run();

  // The configuration the gateway started with; a reload replaces its tenants. The admin token and
  // the TLS context a reload may replace are read through admin_token_sha256() and tls_context().
  const GatewayConfig& config() const { return cfg_; }
  // The admin token's SHA-256 digest (hex), "" when the admin API is disabled. Any thread.
  std::string admin_token_sha256() const;
  // The TLS context for new TLS connections (busgate+tls, HTTPS, WSS); null without tls.cert_file.
  // A reload replaces it; the replaced ones stay alive until the gateway stops. Any thread.
  std::shared_ptr<boost::asio::ssl::context> tls_context() const;
  TenantRegistry& registry() { return registry_; }
  Bus& bus() { return *bus_; }
  Metrics& metrics() { return metrics_; }
  // Bytes held for clients on this node (limits.max_queued_bytes), queue_budget.hpp.
  ByteBudget& queued_budget() { return queued_budget_; }
  // Failed HELLOs per remote address (limits.auth_failures_burst, limits.auth_failures_per_sec).
  AuthThrottle& auth_throttle() { return auth_throttle_; }
  const std::string& node_id() const { return cfg_.node_id; }
  bool draining() const { return draining_.load(); }
  bool ready() const { return !draining_ && bus_->healthy(); }

  void add_session(const std::shared_ptr<Session>& s);
  void remove_session(uint64_t id);
  std::vector<std::shared_ptr<Session>> sessions() const;
  uint64_t next_session_id() { return next_session_id_.fetch_add(1); }
  // Picks the io_context for a new connection (round-robin).
  boost::asio::io_context& next_context();

  // Reloads the config file (SIGHUP, admin API): tenants, the authentication throttle, the admin
  // token and the TLS certificate, key and client CA. Returns an error message (nothing changed) or "".
  std::string reload();
  void configure_durable();
  void begin_drain();
  // Closes a connection by session number (admin API); false when there is none.
  bool close_session(uint64_t id);
  std::shared_ptr<Session> find_session(uint64_t id) const;
  // Clients an operator refuses for a while (admin API). add_refusal() and lift_refusal() also tell
  // the other nodes on the bus.
  RefusalList& refusals() { return refusals_; }
  void add_refusal(const Refusal& r);
  bool lift_refusal(const std::string& id);
  // The admin API across nodes (admin_cluster.hpp); null before run().
  AdminCluster* admin_cluster() { return admin_.get(); }

 private:
  void start_tcp();
  void drain_tick();
  // True when no connection is registered and every Session object of a closed one is destroyed.
  bool sessions_released();
  void stop_io();   // ends run(): the io_contexts stop (they are not destroyed)
  void teardown();  // the order above; idempotent

  GatewayConfig cfg_;
  std::string config_path_;
  // Before the registry: the tenants' delivery lanes report into it until they are destroyed.
  ByteBudget queued_budget_{cfg_.max_queued_bytes};
  AuthThrottle auth_throttle_{cfg_.auth_failures_burst, cfg_.auth_failures_per_sec};
  RefusalList refusals_{cfg_.node_id};
  TenantRegistry registry_;
  Metrics metrics_;
  // Declared in reverse teardown order (members are destroyed last to first), which teardown()
  // also follows explicitly: the contexts outlive the bus, the bus outlives the listeners.
  std::vector<std::unique_ptr<boost::asio::io_context>> contexts_;
  std::unique_ptr<Bus> bus_;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::unique_ptr<HttpServer> http_;
  std::shared_ptr<AdminCluster> admin_;  // its timers live in contexts_[0]
  std::vector<std::thread> threads_;
  std::atomic<size_t> rr_{0};

  std::mutex reload_mu_;  // one reload at a time (SIGHUP and POST /admin/reload)
  mutable std::mutex admin_token_mu_;
  std::string admin_token_sha256_{cfg_.admin_token_sha256};  // under admin_token_mu_

  mutable std::mutex sessions_mu_;
  std::unordered_map<uint64_t, std::weak_ptr<Session>> sessions_;
  // Closed connections whose Session may still be referenced by a pending handler (pruned of the
  // expired ones as it grows). The bus is stopped only once they are all gone.
  std::vector<std::weak_ptr<Session>> retired_;
  size_t retired_prune_at_ = 64;
  std::atomic<uint64_t> next_session_id_{1};
  std::atomic<bool> draining_{false};
  std::chrono::steady_clock::time_point drain_deadline_{};
  std::optional<std::chrono::steady_clock::time_point> release_deadline_;
  bool drain_forced_ = false;
  bool torn_down_ = false;
};

}  // namespace busgate::gw
