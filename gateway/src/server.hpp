#pragma once
// The gateway process: io_context pool, listeners, the session registry, signals, drain and reload.

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "bus.hpp"
#include "config.hpp"
#include "metrics.hpp"
#include "tenancy.hpp"

namespace boost::asio {
class io_context;
}

namespace busgate::gw {

class Session;
class HttpServer;

// The io_context (as its execution_context) that the calling thread runs; nullptr on other threads.
const void* current_io_context();

class Server {
 public:
  Server(GatewayConfig cfg, std::string config_path);
  ~Server();
  // Runs until drained (SIGTERM/SIGINT) and returns the process exit code.
  int run();

  const GatewayConfig& config() const { return cfg_; }
  TenantRegistry& registry() { return registry_; }
  Bus& bus() { return *bus_; }
  Metrics& metrics() { return metrics_; }
  const std::string& node_id() const { return cfg_.node_id; }
  bool draining() const { return draining_.load(); }
  bool ready() const { return !draining_ && bus_->healthy(); }

  void add_session(const std::shared_ptr<Session>& s);
  void remove_session(uint64_t id);
  std::vector<std::shared_ptr<Session>> sessions() const;
  uint64_t next_session_id() { return next_session_id_.fetch_add(1); }
  // Picks the io_context for a new connection (round-robin).
  boost::asio::io_context& next_context();

  // Reloads tenants from the config file (SIGHUP, admin API). Returns an error message or "".
  std::string reload();
  void configure_durable();
  void begin_drain();
  // Closes a connection by session number (admin API); false when there is none.
  bool close_session(uint64_t id);

 private:
  void start_tcp();
  void drain_tick();

  GatewayConfig cfg_;
  std::string config_path_;
  TenantRegistry registry_;
  Metrics metrics_;
  std::unique_ptr<Bus> bus_;
  std::vector<std::unique_ptr<boost::asio::io_context>> contexts_;
  std::vector<std::thread> threads_;
  std::atomic<size_t> rr_{0};
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::unique_ptr<HttpServer> http_;

  mutable std::mutex sessions_mu_;
  std::unordered_map<uint64_t, std::weak_ptr<Session>> sessions_;
  std::atomic<uint64_t> next_session_id_{1};
  std::atomic<bool> draining_{false};
  std::chrono::steady_clock::time_point drain_deadline_{};
  bool drain_forced_ = false;
};

}  // namespace busgate::gw
