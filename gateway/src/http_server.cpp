#include "http_server.hpp"

#include <openssl/crypto.h>
#include <spdlog/spdlog.h>

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/beast/websocket/rfc6455.hpp>
#include <nlohmann/json.hpp>
#include <sstream>

#include "accept_backoff.hpp"
#include "console_page.hpp"
#include "server.hpp"
#include "session.hpp"
#include "ws_transport.hpp"

namespace busgate::gw {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using asio::ip::tcp;
using json = nlohmann::ordered_json;

namespace {

std::string_view sv(beast::string_view s) { return {s.data(), s.size()}; }

std::string escape_label(std::string_view v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

// Prometheus text exposition format 0.0.4.
std::string render_metrics(Server& server) {
  std::ostringstream o;
  auto& m = server.metrics();
  const auto sessions = server.sessions();
  std::map<std::pair<std::string, std::string>, uint64_t> conns;
  uint64_t client_subs = 0;
  for (const auto& s : sessions) {
    const auto i = s->info();
    if (i.state == "handshake" || i.state == "closed") continue;
    conns[{i.tenant, i.transport}]++;
    client_subs += i.subscriptions;
  }
  o << "# HELP busgate_connections Open client connections by tenant and transport.\n"
       "# TYPE busgate_connections gauge\n";
  for (const auto& [k, n] : conns)
    o << "busgate_connections{tenant=\"" << escape_label(k.first) << "\",transport=\"" << k.second << "\"} " << n
      << "\n";
  o << "# HELP busgate_connections_opened_total Connections accepted (any transport).\n"
       "# TYPE busgate_connections_opened_total counter\nbusgate_connections_opened_total "
    << m.connections_opened.load() << "\n";
  o << "# HELP busgate_connections_closed_total Connections closed.\n"
       "# TYPE busgate_connections_closed_total counter\nbusgate_connections_closed_total "
    << m.connections_closed.load() << "\n";
  o << "# HELP busgate_foreign_protocol_rejects_total Connections that spoke another protocol on the TCP port.\n"
       "# TYPE busgate_foreign_protocol_rejects_total counter\nbusgate_foreign_protocol_rejects_total "
    << m.foreign_protocol_rejects.load() << "\n";
  const auto tenants = server.registry().all();
  struct Family {
    const char* name;
    const char* help;
    std::atomic<uint64_t> TenantState::*field;
  };
  const Family fams[] = {
      {"busgate_messages_in_total", "Messages received from clients (PUB and REQ) by tenant.", &TenantState::msgs_in},
      {"busgate_bytes_in_total", "Payload bytes received from clients by tenant.", &TenantState::bytes_in},
      {"busgate_messages_out_total", "Messages delivered to clients (MSG) by tenant.", &TenantState::msgs_out},
      {"busgate_bytes_out_total", "Payload bytes delivered to clients by tenant.", &TenantState::bytes_out},
  };
  for (const auto& f : fams) {
    o << "# HELP " << f.name << " " << f.help << "\n# TYPE " << f.name << " counter\n";
    for (const auto& t : tenants)
      o << f.name << "{tenant=\"" << escape_label(t->name()) << "\"} " << ((*t).*(f.field)).load() << "\n";
  }
  o << "# HELP busgate_tenant_connections Connections of each tenant on this node.\n"
       "# TYPE busgate_tenant_connections gauge\n";
  for (const auto& t : tenants)
    o << "busgate_tenant_connections{tenant=\"" << escape_label(t->name()) << "\"} " << t->connections() << "\n";
  o << "# HELP busgate_tenant_requests_inflight Requests in flight of each tenant (capped by max_inflight_requests).\n"
       "# TYPE busgate_tenant_requests_inflight gauge\n";
  for (const auto& t : tenants)
    o << "busgate_tenant_requests_inflight{tenant=\"" << escape_label(t->name()) << "\"} " << t->inflight() << "\n";
  o << "# HELP busgate_subscriptions Client subscriptions on this node.\n"
       "# TYPE busgate_subscriptions gauge\nbusgate_subscriptions "
    << client_subs << "\n";
  const auto bs = server.bus().stats();
  o << "# HELP busgate_bus_subscriptions Subscriptions held on the bus after interest dedup.\n"
       "# TYPE busgate_bus_subscriptions gauge\nbusgate_bus_subscriptions "
    << bs.subscriptions << "\n";
  o << "# HELP busgate_bus_reconnects_total Reconnections to the bus.\n"
       "# TYPE busgate_bus_reconnects_total counter\nbusgate_bus_reconnects_total "
    << bs.reconnects << "\n";
  o << "# HELP busgate_bus_healthy 1 when the bus is connected.\n# TYPE busgate_bus_healthy gauge\nbusgate_bus_healthy "
    << (server.bus().healthy() ? 1 : 0) << "\n";
  o << "# HELP busgate_requests_inflight Requests waiting for a reply.\n"
       "# TYPE busgate_requests_inflight gauge\nbusgate_requests_inflight "
    << m.requests_inflight.load() << "\n";
  o << "# HELP busgate_requests_total Requests received.\n# TYPE busgate_requests_total counter\nbusgate_requests_total "
    << m.requests_total.load() << "\n";
  o << "# HELP busgate_request_duration_seconds Time from REQ to a reply or no-responders answer.\n"
       "# TYPE busgate_request_duration_seconds histogram\n";
  uint64_t cum = 0;
  for (size_t i = 0; i < Metrics::kLatencyBucketsUs.size(); ++i) {
    cum += m.latency_buckets[i].load();
    o << "busgate_request_duration_seconds_bucket{le=\"" << static_cast<double>(Metrics::kLatencyBucketsUs[i]) / 1e6
      << "\"} " << cum << "\n";
  }
  cum += m.latency_buckets.back().load();
  o << "busgate_request_duration_seconds_bucket{le=\"+Inf\"} " << cum << "\n";
  o << "busgate_request_duration_seconds_sum " << static_cast<double>(m.latency_sum_us.load()) / 1e6 << "\n";
  o << "busgate_request_duration_seconds_count " << m.latency_count.load() << "\n";
  if (DurableBus* d = server.bus().durable()) {
    const auto stats = d->consumer_stats();
    struct CFam {
      const char* name;
      const char* type;
      const char* help;
      uint64_t (*get)(const ConsumerStats&);
    };
    const CFam cfams[] = {
        {"busgate_consumer_pending", "gauge", "Stored messages a durable consumer has not delivered yet (its backlog).",
         [](const ConsumerStats& c) { return c.pending; }},
        {"busgate_consumer_ack_pending", "gauge", "Deliveries of a durable consumer not yet acknowledged (at most max_inflight).",
         [](const ConsumerStats& c) { return c.ack_pending; }},
        {"busgate_consumer_max_inflight", "gauge", "A durable consumer's cap on unacknowledged deliveries.",
         [](const ConsumerStats& c) { return static_cast<uint64_t>(c.max_inflight); }},
        {"busgate_consumer_redelivered_total", "counter", "Redeliveries (second and later attempts) of a durable consumer.",
         [](const ConsumerStats& c) { return c.redelivered; }},
        {"busgate_consumer_dead_lettered_total", "counter", "Messages a durable consumer sent to its dead-letter subject.",
         [](const ConsumerStats& c) { return c.dead_lettered; }},
        {"busgate_consumer_subscribers", "gauge", "Durable subscriptions of a consumer on this node.",
         [](const ConsumerStats& c) { return static_cast<uint64_t>(c.subscribers); }},
    };
    for (const auto& f : cfams) {
      o << "# HELP " << f.name << " " << f.help << "\n# TYPE " << f.name << " " << f.type << "\n";
      for (const auto& c : stats)
        o << f.name << "{tenant=\"" << escape_label(c.tenant) << "\",stream=\"" << escape_label(c.stream)
          << "\",consumer=\"" << escape_label(c.consumer) << "\"} " << f.get(c) << "\n";
    }
  }
  o << "# HELP busgate_errors_total Errors sent to clients (ERR frames and error RES statuses) by code.\n"
       "# TYPE busgate_errors_total counter\n";
  for (const auto& c : proto::all_codes()) {
    const auto n = m.errors[static_cast<size_t>(c.code)].load();
    if (n) o << "busgate_errors_total{code=\"" << static_cast<int>(c.code) << "\",name=\"" << c.name << "\"} " << n << "\n";
  }
  o << "# HELP busgate_slow_consumer_disconnects_total Connections closed by the slow-consumer policy.\n"
       "# TYPE busgate_slow_consumer_disconnects_total counter\nbusgate_slow_consumer_disconnects_total "
    << m.slow_consumer_disconnects.load() << "\n";
  o << "# HELP busgate_bus_messages_dropped_total Messages from the bus not delivered because their subject is not UTF-8.\n"
       "# TYPE busgate_bus_messages_dropped_total counter\nbusgate_bus_messages_dropped_total "
    << m.bus_messages_dropped.load() << "\n";
  o << "# HELP busgate_bus_headers_dropped_total Headers from the bus left out because they break the protocol's header rules.\n"
       "# TYPE busgate_bus_headers_dropped_total counter\nbusgate_bus_headers_dropped_total "
    << server.bus().stats().headers_dropped << "\n";
  o << "# HELP busgate_producer_paces_total Times a publishing connection paused while its tenant's deliveries waited for a slow consumer.\n"
       "# TYPE busgate_producer_paces_total counter\nbusgate_producer_paces_total "
    << m.producer_paces.load() << "\n";
  o << "# HELP busgate_backlog_drops_total Messages dropped because a tenant's delivery backlog was at twice max_backlog_bytes.\n"
       "# TYPE busgate_backlog_drops_total counter\nbusgate_backlog_drops_total "
    << m.backlog_drops.load() << "\n";
  o << "# HELP busgate_budget_disconnects_total Connections closed with SLOW_CONSUMER because their tenant's or the node's queued-bytes budget was full.\n"
       "# TYPE busgate_budget_disconnects_total counter\nbusgate_budget_disconnects_total "
    << m.budget_disconnects.load() << "\n";
  o << "# HELP busgate_budget_drops_total Messages not kept in a delivery backlog because a queued-bytes budget was full.\n"
       "# TYPE busgate_budget_drops_total counter\nbusgate_budget_drops_total "
    << m.budget_drops.load() << "\n";
  o << "# HELP busgate_queued_bytes Bytes held for clients on this node (outbound queues and delivery backlogs).\n"
       "# TYPE busgate_queued_bytes gauge\nbusgate_queued_bytes "
    << server.queued_budget().used() << "\n";
  o << "# HELP busgate_auth_failures_total HELLOs whose credentials were not accepted.\n"
       "# TYPE busgate_auth_failures_total counter\nbusgate_auth_failures_total "
    << m.auth_failures.load() << "\n";
  o << "# HELP busgate_auth_throttled_total HELLOs refused before their token was checked because their address failed too often.\n"
       "# TYPE busgate_auth_throttled_total counter\nbusgate_auth_throttled_total "
    << m.auth_throttled.load() << "\n";
  o << "# HELP busgate_bus_subscriptions_refused_total Subscriptions the bus server refused (permissions of the gateway's own bus user).\n"
       "# TYPE busgate_bus_subscriptions_refused_total counter\nbusgate_bus_subscriptions_refused_total "
    << bs.subscriptions_refused << "\n";
  o << "# HELP busgate_bus_publishes_refused_total Publishes the bus server refused and dropped (permissions of the gateway's own bus user).\n"
       "# TYPE busgate_bus_publishes_refused_total counter\nbusgate_bus_publishes_refused_total "
    << bs.publishes_refused << "\n";
  o << "# HELP busgate_bus_congestion_pauses_total Times a publishing connection paused for a congested bus.\n"
       "# TYPE busgate_bus_congestion_pauses_total counter\nbusgate_bus_congestion_pauses_total "
    << m.bus_congestion_pauses.load() << "\n";
  o << "# HELP busgate_accept_errors_total Failed accepts by listener and reason (descriptors, memory: it paused).\n"
       "# TYPE busgate_accept_errors_total counter\n";
  for (const auto& c : accept_error_counts())
    o << "busgate_accept_errors_total{listener=\"" << c.listener << "\",reason=\"" << c.reason << "\"} " << c.count
      << "\n";
  o << "# HELP busgate_draining 1 while the node drains.\n# TYPE busgate_draining gauge\nbusgate_draining "
    << (server.draining() ? 1 : 0) << "\n";
  return o.str();
}

json connection_json(const Session::Info& i) {
  return json{{"id", i.id},           {"session_id", i.session_id}, {"tenant", i.tenant},
              {"transport", i.transport}, {"remote", i.remote},   {"name", i.name},
              {"state", i.state},     {"subscriptions", i.subscriptions}, {"requests_inflight", i.inflight},
              {"msgs_in", i.msgs_in}, {"msgs_out", i.msgs_out},   {"bytes_in", i.bytes_in},
              {"bytes_out", i.bytes_out}, {"pending_bytes", i.pending_bytes}};
}

template <class Stream>
constexpr bool kTls = !std::is_same_v<Stream, beast::tcp_stream>;

// One HTTP connection: plain (beast::tcp_stream) or HTTPS (beast::ssl_stream<beast::tcp_stream>).
template <class Stream>
class HttpSession : public std::enable_shared_from_this<HttpSession<Stream>> {
 public:
  template <class... Args>
  HttpSession(Server& server, Args&&... args) : server_(server), stream_(std::forward<Args>(args)...) {}

  void start() {
    if constexpr (kTls<Stream>) {
      beast::get_lowest_layer(stream_).expires_after(std::chrono::seconds(10));
      stream_.async_handshake(asio::ssl::stream_base::server, [self = this->shared_from_this()](beast::error_code ec) {
        if (ec) return self->close();
        self->do_read();
      });
    } else {
      do_read();
    }
  }

 private:
  void do_read() {
    parser_.emplace();
    parser_->body_limit(64 * 1024);
    beast::get_lowest_layer(stream_).expires_after(std::chrono::seconds(30));
    http::async_read(stream_, buf_, *parser_,
                     [self = this->shared_from_this()](beast::error_code ec, size_t n) { self->on_read(ec, n); });
  }

  void on_read(beast::error_code ec, size_t) {
    if (ec) return close();
    req_ = parser_->release();
    if (target() == "/v1/ws") return upgrade();
    auto res = std::make_shared<http::response<http::string_body>>(route());
    res->keep_alive(req_.keep_alive());
    res->prepare_payload();
    http::async_write(stream_, *res, [self = this->shared_from_this(), res](beast::error_code e, size_t) {
      if (e || !res->keep_alive()) return self->close();
      self->do_read();
    });
  }

  std::string target() const {
    const std::string_view t = sv(req_.target());
    return std::string(t.substr(0, t.find('?')));
  }

  void upgrade() {
    if (!beast::websocket::is_upgrade(req_)) return reply(http::status::upgrade_required, "use a WebSocket upgrade\n");
    const auto sp = select_subprotocol(sv(req_[http::field::sec_websocket_protocol]));
    if (sp.empty())
      return reply(http::status::bad_request,
                   "offer the subprotocol busgate.v1 (binary) or busgate.v1.json (text) in Sec-WebSocket-Protocol\n");
    if (server_.draining()) return reply(http::status::service_unavailable, "draining\n");
    beast::get_lowest_layer(stream_).expires_never();
    if constexpr (kTls<Stream>) start_websocket(server_, std::move(stream_), std::move(req_), sp);
    else start_websocket(server_, stream_.release_socket(), std::move(req_), sp);
  }

  void reply(http::status st, std::string body) {
    auto res = std::make_shared<http::response<http::string_body>>(st, req_.version());
    res->set(http::field::server, "busgate");
    res->set(http::field::content_type, "text/plain; charset=utf-8");
    res->body() = std::move(body);
    res->keep_alive(false);
    res->prepare_payload();
    http::async_write(stream_, *res, [self = this->shared_from_this(), res](beast::error_code, size_t) { self->close(); });
  }

  bool admin_authorized() const {
    const auto& digest = server_.config().admin_token_sha256;
    if (digest.empty()) return false;
    const std::string_view auth = sv(req_[http::field::authorization]);
    constexpr std::string_view kBearer = "Bearer ";
    if (!auth.starts_with(kBearer)) return false;
    const std::string presented = sha256_hex(auth.substr(kBearer.size()));
    return CRYPTO_memcmp(presented.data(), digest.data(), digest.size()) == 0;
  }

  http::response<http::string_body> route() {
    http::response<http::string_body> res{http::status::ok, req_.version()};
    res.set(http::field::server, "busgate");
    res.set(http::field::content_type, "text/plain; charset=utf-8");
    const std::string t = target();
    const bool get = req_.method() == http::verb::get || req_.method() == http::verb::head;
    auto json_reply = [&](http::status st, const json& j) {
      res.result(st);
      res.set(http::field::content_type, "application/json");
      res.body() = j.dump(2) + "\n";
    };
    if (t == "/healthz" && get) {
      res.body() = "ok\n";
    } else if (t == "/readyz" && get) {
      const bool ready = server_.ready();
      res.result(ready ? http::status::ok : http::status::service_unavailable);
      const std::string why = server_.bus().not_ready_reason();
      res.body() = ready                ? "ready\n"
                   : server_.draining() ? "draining\n"
                   : why.empty()        ? "bus unavailable\n"
                                        : why + "\n";
    } else if (t == "/metrics" && get) {
      res.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
      res.body() = render_metrics(server_);
    } else if ((t == "/debug" || t == "/debug/") && get) {
      res.set(http::field::content_type, "text/html; charset=utf-8");
      res.set(http::field::cache_control, "no-store");
      res.body() = std::string(console_page());
    } else if (t.starts_with("/admin/")) {
      if (server_.config().admin_token_sha256.empty()) {
        json_reply(http::status::forbidden, {{"error", "the admin API is disabled: set admin.token_sha256"}});
      } else if (!admin_authorized()) {
        res.set(http::field::www_authenticate, "Bearer realm=\"busgate admin\"");
        json_reply(http::status::unauthorized, {{"error", "send Authorization: Bearer <admin token>"}});
      } else {
        admin(t, res, json_reply);
      }
    } else {
      res.result(http::status::not_found);
      res.body() = "not found: " + t + "\n";
    }
    return res;
  }

  template <typename Reply>
  void admin(const std::string& t, http::response<http::string_body>& res, Reply&& json_reply) {
    const bool get = req_.method() == http::verb::get;
    const bool post = req_.method() == http::verb::post;
    if (t == "/admin/connections" && get) {
      json list = json::array();
      for (const auto& s : server_.sessions()) list.push_back(connection_json(s->info()));
      return json_reply(http::status::ok, json{{"connections", list}});
    }
    if (t == "/admin/subscriptions" && get) {
      json list = json::array();
      for (const auto& s : server_.sessions()) {
        const auto i = s->info();
        for (const auto& sub : s->subscriptions())
          list.push_back({{"connection", i.id},    {"session_id", i.session_id}, {"tenant", i.tenant},
                          {"sid", sub.sid},        {"subject", sub.subject},     {"queue", sub.queue},
                          {"bus_subject", sub.bus_subject}});
      }
      return json_reply(http::status::ok, json{{"subscriptions", list}, {"bus_subscriptions", server_.bus().stats().subscriptions}});
    }
    if (t == "/admin/tenants" && get) {
      json list = json::array();
      for (const auto& ts : server_.registry().all()) {
        if (ts->removed()) continue;
        const auto c = ts->config();
        list.push_back({{"name", ts->name()},
                        {"prefix", c->prefix},
                        {"connections", {{"used", ts->connections()}, {"limit", c->limits.max_connections}}},
                        {"requests_inflight", {{"used", ts->inflight()}, {"limit", c->limits.max_inflight_requests}}},
                        {"limits",
                         {{"max_subscriptions", c->limits.max_subscriptions},
                          {"max_payload", c->limits.max_payload},
                          {"publish_msgs_per_sec", c->limits.publish_msgs_per_sec},
                          {"publish_bytes_per_sec", c->limits.publish_bytes_per_sec}}},
                        {"messages_in", ts->msgs_in.load()},
                        {"bytes_in", ts->bytes_in.load()},
                        {"messages_out", ts->msgs_out.load()},
                        {"bytes_out", ts->bytes_out.load()}});
      }
      return json_reply(http::status::ok, json{{"tenants", list}});
    }
    if (t == "/admin/consumers" && get) {
      json list = json::array();
      if (DurableBus* d = server_.bus().durable())
        for (const auto& c : d->consumer_stats())
          list.push_back({{"tenant", c.tenant},
                          {"stream", c.stream},
                          {"consumer", c.consumer},
                          {"pending", c.pending},
                          {"ack_pending", c.ack_pending},
                          {"max_inflight", c.max_inflight},
                          {"redelivered", c.redelivered},
                          {"dead_lettered", c.dead_lettered},
                          {"subscribers", c.subscribers}});
      return json_reply(http::status::ok, json{{"consumers", list}});
    }
    if (t == "/admin/reload" && post) {
      const auto err = server_.reload();
      if (!err.empty()) return json_reply(http::status::unprocessable_entity, json{{"error", err}});
      return json_reply(http::status::ok, json{{"reloaded", true}});
    }
    constexpr std::string_view kConn = "/admin/connections/";
    if (t.starts_with(kConn) && t.ends_with("/close") && post) {
      const auto id_text = t.substr(kConn.size(), t.size() - kConn.size() - 6);
      uint64_t id = 0;
      const bool num = !id_text.empty() && std::all_of(id_text.begin(), id_text.end(), ::isdigit);
      if (num) id = std::stoull(id_text);
      if (!num || !server_.close_session(id))
        return json_reply(http::status::not_found, json{{"error", "no connection " + id_text}});
      return json_reply(http::status::ok, json{{"closed", id}});
    }
    res.result(http::status::not_found);
    json_reply(http::status::not_found, json{{"error", "no admin endpoint " + std::string(req_.method_string()) + " " + t}});
  }

  void close() {
    beast::error_code ec;
    beast::get_lowest_layer(stream_).socket().shutdown(tcp::socket::shutdown_send, ec);
  }

  Server& server_;
  Stream stream_;
  beast::flat_buffer buf_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::request<http::string_body> req_;
};

}  // namespace

struct HttpServer::Impl {
  Impl(Server& s, asio::io_context& c) : server(s), ctx(c) {}
  Server& server;
  asio::io_context& ctx;
  std::vector<std::unique_ptr<tcp::acceptor>> acceptors;
  std::vector<std::unique_ptr<AcceptLoop>> loops;  // after the acceptors: destroyed first

  tcp::acceptor& listen(const Endpoint& ep, const char* what) {
    tcp::endpoint endpoint(asio::ip::make_address(ep.host), ep.port);
    auto acc = std::make_unique<tcp::acceptor>(ctx);
    acc->open(endpoint.protocol());
    acc->set_option(tcp::acceptor::reuse_address(true));
    acc->bind(endpoint);
    acc->listen(asio::socket_base::max_listen_connections);
    const auto local = acc->local_endpoint();
    spdlog::info("{} listening on {}:{}", what, local.address().to_string(), local.port());
    acceptors.push_back(std::move(acc));
    return *acceptors.back();
  }

  void accept(tcp::acceptor& acc, const char* what, asio::ssl::context* tls) {
    loops.push_back(std::make_unique<AcceptLoop>(
        acc, what, [this]() -> asio::io_context& { return server.next_context(); },
        [this, tls](tcp::socket sock) {
          using Tls = beast::ssl_stream<beast::tcp_stream>;
          if (tls) std::make_shared<HttpSession<Tls>>(server, std::move(sock), *tls)->start();
          else std::make_shared<HttpSession<beast::tcp_stream>>(server, std::move(sock))->start();
        }));
    loops.back()->start();
  }
};

HttpServer::HttpServer(Server& server, asio::io_context& ctx) : impl_(std::make_unique<Impl>(server, ctx)) {
  if (server.config().admin_token_sha256.empty()) spdlog::info("admin API disabled (no admin.token_sha256)");
}
HttpServer::~HttpServer() = default;

void HttpServer::start(const Endpoint& ep) { impl_->accept(impl_->listen(ep, "http"), "http", nullptr); }

void HttpServer::start_tls(const Endpoint& ep, asio::ssl::context& tls) {
  impl_->accept(impl_->listen(ep, "https"), "https", &tls);
}

void HttpServer::stop_accepting() {}  // health, readiness and metrics stay reachable while draining

void HttpServer::stop() {
  for (auto& l : impl_->loops) l->close();
}

}  // namespace busgate::gw
