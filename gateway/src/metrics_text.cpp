#include "metrics_text.hpp"

#include <map>
#include <sstream>

#include "accept_backoff.hpp"
#include "durable.hpp"
#include "process_metrics.hpp"
#include "server.hpp"
#include "session.hpp"

#ifndef BUSGATE_VERSION
#define BUSGATE_VERSION "unknown"
#endif
#ifndef BUSGATE_COMMIT
#define BUSGATE_COMMIT ""
#endif

namespace busgate::gw {

namespace {

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

std::string compiler() {
#if defined(__clang__)
  return "clang " + std::to_string(__clang_major__) + "." + std::to_string(__clang_minor__) + "." +
         std::to_string(__clang_patchlevel__);
#elif defined(__GNUC__)
  return "gcc " + std::to_string(__GNUC__) + "." + std::to_string(__GNUC_MINOR__) + "." +
         std::to_string(__GNUC_PATCHLEVEL__);
#else
  return "unknown";
#endif
}

void header(std::ostringstream& o, const char* name, const char* type, const char* help) {
  o << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n";
}

// A family without labels: one sample.
template <typename V>
void single(std::ostringstream& o, const char* name, const char* type, const char* help, V value) {
  header(o, name, type, help);
  o << name << " " << value << "\n";
}

void render_latency(std::ostringstream& o, const std::vector<uint64_t>& bounds, const std::string& tenant,
                    const TenantMetrics& t) {
  const std::string lbl = "tenant=\"" + escape_label(tenant) + "\"";
  uint64_t cum = 0;
  for (size_t i = 0; i < bounds.size(); ++i) {
    cum += t.latency_buckets[i].load(std::memory_order_relaxed);
    o << "busgate_request_duration_seconds_bucket{" << lbl << ",le=\"" << static_cast<double>(bounds[i]) / 1e6
      << "\"} " << cum << "\n";
  }
  cum += t.latency_buckets[bounds.size()].load(std::memory_order_relaxed);
  o << "busgate_request_duration_seconds_bucket{" << lbl << ",le=\"+Inf\"} " << cum << "\n";
  o << "busgate_request_duration_seconds_sum{" << lbl << "} "
    << static_cast<double>(t.latency_sum_us.load(std::memory_order_relaxed)) / 1e6 << "\n";
  o << "busgate_request_duration_seconds_count{" << lbl << "} " << cum << "\n";
}

void render_errors(std::ostringstream& o, const std::string& tenant, const TenantMetrics& t) {
  for (const auto& c : proto::all_codes()) {
    const auto n = t.errors[static_cast<size_t>(c.code)].load(std::memory_order_relaxed);
    if (n)
      o << "busgate_errors_total{tenant=\"" << escape_label(tenant) << "\",code=\"" << static_cast<int>(c.code)
        << "\",name=\"" << c.name << "\"} " << n << "\n";
  }
}

void render_consumers(std::ostringstream& o, DurableBus& d) {
  const auto stats = d.consumer_stats();
  struct CFam {
    const char* name;
    const char* type;
    const char* help;
    uint64_t (*get)(const ConsumerStats&);
  };
  const CFam cfams[] = {
      {"busgate_consumer_pending", "gauge", "Stored messages a durable consumer has not delivered yet (its backlog).",
       [](const ConsumerStats& c) { return c.pending; }},
      {"busgate_consumer_ack_pending", "gauge",
       "Deliveries of a durable consumer not yet acknowledged (at most max_inflight).",
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
    header(o, f.name, f.type, f.help);
    for (const auto& c : stats)
      o << f.name << "{tenant=\"" << escape_label(c.tenant) << "\",stream=\"" << escape_label(c.stream)
        << "\",consumer=\"" << escape_label(c.consumer) << "\"} " << f.get(c) << "\n";
  }
}

}  // namespace

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
  const auto tenants = server.registry().all();  // configured tenants (and removed ones, until restart)
  auto per_tenant = [&](const char* name, const char* type, const char* help, auto get) {
    header(o, name, type, help);
    for (const auto& t : tenants) o << name << "{tenant=\"" << escape_label(t->name()) << "\"} " << get(*t) << "\n";
  };

  header(o, "busgate_build_info", "gauge", "The gateway's build: version, commit and compiler (always 1).");
  o << "busgate_build_info{version=\"" << escape_label(BUSGATE_VERSION) << "\",commit=\""
    << escape_label(BUSGATE_COMMIT) << "\",compiler=\"" << escape_label(compiler()) << "\"} 1\n";
  header(o, "busgate_node_info", "gauge", "This node's node_id and bus kind (always 1).");
  o << "busgate_node_info{node_id=\"" << escape_label(server.node_id()) << "\",bus=\"" << server.bus().kind()
    << "\"} 1\n";

  header(o, "busgate_connections", "gauge", "Open client connections by tenant and transport.");
  for (const auto& [k, n] : conns)
    o << "busgate_connections{tenant=\"" << escape_label(k.first) << "\",transport=\"" << k.second << "\"} " << n
      << "\n";
  single(o, "busgate_connections_opened_total", "counter", "Connections accepted (any transport).",
         m.connections_opened.load());
  single(o, "busgate_connections_closed_total", "counter", "Connections closed.", m.connections_closed.load());
  single(o, "busgate_foreign_protocol_rejects_total", "counter",
         "Connections that spoke another protocol on the TCP port.", m.foreign_protocol_rejects.load());
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
  for (const auto& f : fams)
    per_tenant(f.name, "counter", f.help, [&](const TenantState& t) { return (t.*(f.field)).load(); });
  per_tenant("busgate_tenant_connections", "gauge", "Connections of each tenant on this node.",
             [](const TenantState& t) { return t.connections(); });
  per_tenant("busgate_tenant_requests_inflight", "gauge",
             "Requests in flight of each tenant (capped by max_inflight_requests).",
             [](const TenantState& t) { return t.inflight(); });
  per_tenant("busgate_tenant_queued_bytes", "gauge",
             "Bytes held for each tenant's clients on this node (outbound queues and delivery backlog).",
             [](const TenantState& t) { return t.queued_bytes(); });
  single(o, "busgate_subscriptions", "gauge", "Client subscriptions on this node.", client_subs);
  const auto bs = server.bus().stats();
  single(o, "busgate_bus_subscriptions", "gauge", "Subscriptions held on the bus after interest dedup.",
         bs.subscriptions);
  single(o, "busgate_bus_reconnects_total", "counter", "Reconnections to the bus.", bs.reconnects);
  single(o, "busgate_bus_healthy", "gauge", "1 when the bus is connected.", server.bus().healthy() ? 1 : 0);
  per_tenant("busgate_requests_inflight", "gauge", "Requests waiting for a reply, by tenant.",
             [](const TenantState& t) { return t.inflight(); });
  per_tenant("busgate_requests_total", "counter", "Requests received, by tenant.",
             [](const TenantState& t) { return t.metrics.requests_total.load(std::memory_order_relaxed); });
  header(o, "busgate_request_duration_seconds", "histogram",
         "Time from REQ to a reply or an error answer from the bus (no responders), by tenant.");
  for (const auto& t : tenants) render_latency(o, m.latency_bounds_us, t->name(), t->metrics);
  if (DurableBus* d = server.bus().durable()) render_consumers(o, *d);
  header(o, "busgate_errors_total", "counter",
         "Errors sent to clients (ERR frames and error RES statuses) by tenant and code; tenant=\"\" before "
         "authentication.");
  render_errors(o, "", m.unauthenticated);
  for (const auto& t : tenants) render_errors(o, t->name(), t->metrics);
  per_tenant("busgate_slow_consumer_disconnects_total", "counter",
             "Connections closed by the slow-consumer policy, by tenant.",
             [](const TenantState& t) { return t.metrics.slow_consumer_disconnects.load(std::memory_order_relaxed); });
  single(o, "busgate_bus_messages_dropped_total", "counter",
         "Messages from the bus not delivered because their subject is not UTF-8.", m.bus_messages_dropped.load());
  single(o, "busgate_bus_headers_dropped_total", "counter",
         "Headers from the bus left out because they break the protocol's header rules.", bs.headers_dropped);
  single(o, "busgate_producer_paces_total", "counter",
         "Times a publishing connection paused while its tenant's deliveries waited for a slow consumer.",
         m.producer_paces.load());
  single(o, "busgate_backlog_drops_total", "counter",
         "Messages dropped because a tenant's delivery backlog was at twice max_backlog_bytes.",
         m.backlog_drops.load());
  single(o, "busgate_budget_disconnects_total", "counter",
         "Connections closed with SLOW_CONSUMER because their tenant's or the node's queued-bytes budget was full.",
         m.budget_disconnects.load());
  single(o, "busgate_budget_drops_total", "counter",
         "Messages not kept in a delivery backlog because a queued-bytes budget was full.", m.budget_drops.load());
  single(o, "busgate_queued_bytes", "gauge",
         "Bytes held for clients on this node (outbound queues and delivery backlogs).",
         server.queued_budget().used());
  single(o, "busgate_auth_failures_total", "counter", "HELLOs whose credentials were not accepted.",
         m.auth_failures.load());
  single(o, "busgate_auth_throttled_total", "counter",
         "HELLOs refused before their token was checked because their address failed too often.",
         m.auth_throttled.load());
  single(o, "busgate_admin_refused_total", "counter",
         "HELLOs refused because an operator closed a matching connection with refuse_for_ms.",
         m.admin_refused.load());
  single(o, "busgate_bus_subscriptions_refused_total", "counter",
         "Subscriptions the bus server refused (permissions of the gateway's own bus user).",
         bs.subscriptions_refused);
  single(o, "busgate_bus_publishes_refused_total", "counter",
         "Publishes the bus server refused and dropped (permissions of the gateway's own bus user).",
         bs.publishes_refused);
  single(o, "busgate_bus_congestion_pauses_total", "counter", "Times a publishing connection paused for a congested bus.",
         m.bus_congestion_pauses.load());
  header(o, "busgate_accept_errors_total", "counter",
         "Failed accepts by listener and reason (descriptors, memory: it paused).");
  for (const auto& c : accept_error_counts())
    o << "busgate_accept_errors_total{listener=\"" << c.listener << "\",reason=\"" << c.reason << "\"} " << c.count
      << "\n";
  single(o, "busgate_draining", "gauge", "1 while the node drains.", server.draining() ? 1 : 0);
  std::string out = o.str();
  render_process_metrics(out);
  return out;
}

}  // namespace busgate::gw
