#include "admin_views.hpp"

#include "durable.hpp"
#include "server.hpp"
#include "session.hpp"

namespace busgate::gw {

namespace {

constexpr uint64_t kMaxRefuseMs = 7ull * 24 * 3600 * 1000;  // a week

AdminJson connection_json(const Session::Info& i) {
  return AdminJson{{"id", i.id},
                   {"session_id", i.session_id},
                   {"tenant", i.tenant},
                   {"transport", i.transport},
                   {"remote", i.remote},
                   {"name", i.name},
                   {"state", i.state},
                   {"subscriptions", i.subscriptions},
                   {"requests_inflight", i.inflight},
                   {"msgs_in", i.msgs_in},
                   {"msgs_out", i.msgs_out},
                   {"bytes_in", i.bytes_in},
                   {"bytes_out", i.bytes_out},
                   {"pending_bytes", i.pending_bytes}};
}

AdminJson connections(Server& server) {
  AdminJson list = AdminJson::array();
  for (const auto& s : server.sessions()) list.push_back(connection_json(s->info()));
  return AdminJson{{"connections", list}};
}

AdminJson subscriptions(Server& server) {
  AdminJson list = AdminJson::array();
  for (const auto& s : server.sessions()) {
    const auto i = s->info();
    for (const auto& sub : s->subscriptions())
      list.push_back({{"connection", i.id},    {"session_id", i.session_id}, {"tenant", i.tenant},
                      {"sid", sub.sid},        {"subject", sub.subject},     {"queue", sub.queue},
                      {"bus_subject", sub.bus_subject}});
  }
  return AdminJson{{"subscriptions", list}, {"bus_subscriptions", server.bus().stats().subscriptions}};
}

AdminJson tenants(Server& server) {
  AdminJson list = AdminJson::array();
  for (const auto& ts : server.registry().all()) {
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
                    {"bytes_out", ts->bytes_out.load()},
                    {"queued_bytes", ts->queued_bytes()}});
  }
  return AdminJson{{"tenants", list}};
}

AdminJson consumers(Server& server) {
  AdminJson list = AdminJson::array();
  if (DurableBus* d = server.bus().durable())
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
  return AdminJson{{"consumers", list}};
}

}  // namespace

bool is_admin_view(std::string_view view) {
  return view == "connections" || view == "subscriptions" || view == "tenants" || view == "consumers";
}

AdminJson admin_view(Server& server, std::string_view view) {
  if (view == "connections") return connections(server);
  if (view == "subscriptions") return subscriptions(server);
  if (view == "tenants") return tenants(server);
  if (view == "consumers") return consumers(server);
  return nullptr;
}

AdminJson refusal_json(const Refusal& r, std::chrono::steady_clock::time_point now) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(r.until - now).count();
  // A token refusal shows the start of the digest only: enough to tell it from the tenant's others.
  const std::string value = r.by == Refusal::By::token ? "sha256:" + r.value.substr(0, 16) : r.value;
  return AdminJson{{"id", r.id},     {"by", by_name(r.by)},       {"tenant", r.tenant},
                   {"value", value}, {"ms_left", left < 0 ? 0 : left}, {"node", r.node},
                   {"connection", r.connection}};
}

std::string parse_close_body(std::string_view body, CloseRequest& out) {
  if (body.find_first_not_of(" \t\r\n") == std::string_view::npos) return {};
  const auto j = AdminJson::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return "the body must be a JSON object";
  for (const auto& [key, v] : j.items()) {
    if (key == "refuse_for_ms") {
      if (!v.is_number_unsigned() || v.get<uint64_t>() > kMaxRefuseMs)
        return "refuse_for_ms must be an integer from 0 to " + std::to_string(kMaxRefuseMs);
      out.refuse_for_ms = v.get<uint64_t>();
    } else if (key == "by") {
      if (!v.is_string()) return "by must be \"name\", \"address\" or \"token\"";
      const std::string by = v.get<std::string>();
      if (by == "session")
        return "by \"session\" cannot match a later HELLO: every connection gets a new session id (the protocol "
               "has no session resumption); use \"name\", \"address\" or \"token\"";
      out.by = parse_by(by);
      if (!out.by) return "by must be \"name\", \"address\" or \"token\"";
    } else {
      return "unknown key '" + key + "' (refuse_for_ms, by)";
    }
  }
  return {};
}

AdminAnswer admin_close(Server& server, const CloseRequest& req) {
  std::shared_ptr<Session> s = server.find_session(req.id);
  if (!s) return {404, {{"error", "no connection " + std::to_string(req.id) + " on node " + server.node_id()}}};
  AdminJson body{{"closed", req.id}, {"node", server.node_id()}};
  if (req.refuse_for_ms > 0) {
    const auto key = s->client_key();
    if (key.tenant.empty()) return {400, {{"error", "the connection has not authenticated: close it without refuse_for_ms"}}};
    Refusal r;
    r.by = req.by.value_or(key.name.empty() ? Refusal::By::address : Refusal::By::name);
    if (r.by == Refusal::By::name && key.name.empty())
      return {400, {{"error", "the connection gave no client name: refuse it by \"address\" or \"token\""}}};
    r.id = server.refusals().next_id();
    r.tenant = key.tenant;
    r.value = r.by == Refusal::By::name ? key.name : r.by == Refusal::By::address ? key.address : key.token_digest;
    const auto now = std::chrono::steady_clock::now();
    r.until = now + std::chrono::milliseconds(req.refuse_for_ms);
    r.node = server.node_id();
    r.connection = req.id;
    server.add_refusal(r);
    body["refusal"] = refusal_json(r, now);
  }
  s->shutdown(proto::Code::closed_by_admin, "an operator closed this connection");
  return {200, body};
}

}  // namespace busgate::gw
