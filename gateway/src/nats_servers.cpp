#include "nats_servers.hpp"

#include <algorithm>
#include <charconv>

#include "config.hpp"

namespace busgate::gw {

namespace {
constexpr int kMaxRefusedWaitMs = 5000;
}

NatsServerUrl parse_nats_url(const std::string& s) {
  NatsServerUrl u;
  u.text = s;
  std::string rest = s;
  if (auto p = rest.find("://"); p != std::string::npos) {
    const std::string scheme = rest.substr(0, p);
    if (scheme == "tls") u.tls = true;
    else if (scheme != "nats")
      throw ConfigError("bus.servers: '" + s + "': the scheme must be nats:// or tls://");
    rest = rest.substr(p + 3);
  }
  if (auto slash = rest.find('/'); slash != std::string::npos) rest = rest.substr(0, slash);
  if (auto at = rest.rfind('@'); at != std::string::npos) {
    const std::string info = rest.substr(0, at);
    rest = rest.substr(at + 1);
    if (auto colon = info.find(':'); colon != std::string::npos) {
      u.user = info.substr(0, colon);
      u.pass = info.substr(colon + 1);
    } else {
      u.user = info;  // a token
    }
  }
  if (!rest.empty() && rest.front() == '[') {  // [v6]:port
    const auto close = rest.find(']');
    if (close == std::string::npos) throw ConfigError("bus.servers: '" + s + "': unterminated IPv6 address");
    u.host = rest.substr(1, close - 1);
    rest = rest.substr(close + 1);
    u.port = rest.starts_with(":") ? rest.substr(1) : "4222";
  } else if (auto colon = rest.rfind(':'); colon != std::string::npos) {
    u.host = rest.substr(0, colon);
    u.port = rest.substr(colon + 1);
  } else {
    u.host = rest;
    u.port = "4222";
  }
  int port = 0;
  const auto [ptr, ec] = std::from_chars(u.port.data(), u.port.data() + u.port.size(), port);
  if (u.host.empty() || ec != std::errc{} || ptr != u.port.data() + u.port.size() || port <= 0 || port > 65535)
    throw ConfigError("bus.servers: '" + s + "' is not a server address (host:port)");
  return u;
}

NatsUserAuth nats_user_auth(const NatsServerUrl& server, const std::string& user, const std::string& password,
                            const std::string& token) {
  NatsUserAuth a;
  const std::string& u = server.user.empty() ? user : server.user;
  const std::string& p = server.user.empty() ? password : server.pass;
  if (!u.empty() && (!p.empty() || !server.user.empty())) {
    if (server.pass.empty() && !server.user.empty()) {
      a.token = u;  // nats://token@host
    } else {
      a.user = u;
      a.pass = p;
    }
  }
  if (!token.empty()) a.token = token;
  return a;
}

NatsServerPool::NatsServerPool(const std::vector<std::string>& servers) {
  if (servers.empty()) throw ConfigError("bus.servers: at least one server is required");
  for (const auto& s : servers) pool_.push_back(parse_nats_url(s));
}

NatsServerUrl NatsServerPool::next() { return pool_[next_++ % pool_.size()]; }

std::vector<std::string> NatsServerPool::learn(const std::vector<std::string>& announced, const NatsServerUrl& via) {
  std::vector<std::string> added;
  for (const auto& a : announced) {
    NatsServerUrl su;
    try {
      su = parse_nats_url((via.tls ? "tls://" : "nats://") + a);
    } catch (const ConfigError&) {
      continue;
    }
    su.user = via.user;
    su.pass = via.pass;
    const bool known = std::any_of(pool_.begin(), pool_.end(),
                                   [&](const NatsServerUrl& p) { return p.host == su.host && p.port == su.port; });
    if (known) continue;
    added.push_back(su.text);
    pool_.push_back(std::move(su));
  }
  return added;
}

bool NatsServerPool::any_tls() const {
  return std::any_of(pool_.begin(), pool_.end(), [](const NatsServerUrl& u) { return u.tls; });
}

std::chrono::milliseconds nats_reconnect_delay(int refusals, int reconnect_wait_ms) {
  int wait_ms = std::max(reconnect_wait_ms, 1);
  for (int i = 1; i < refusals && wait_ms < kMaxRefusedWaitMs; ++i) wait_ms *= 2;
  return std::chrono::milliseconds(std::min(wait_ms, std::max(kMaxRefusedWaitMs, reconnect_wait_ms)));
}

}  // namespace busgate::gw
