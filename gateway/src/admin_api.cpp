#include "admin_api.hpp"

#include <algorithm>
#include <charconv>
#include <optional>
#include <string>

#include "admin_cluster.hpp"
#include "server.hpp"

namespace busgate::gw {

namespace {

constexpr uint64_t kDefaultWaitMs = 500;
constexpr uint64_t kMaxWaitMs = 5000;
constexpr auto kCloseWait = std::chrono::milliseconds(2000);

// The value of `key` in a query string ("a=1&b=2"); nullopt when absent. Values are not
// percent-decoded: none of the parameters needs it (node ids are [A-Za-z0-9_-]).
std::optional<std::string_view> param(std::string_view query, std::string_view key) {
  while (!query.empty()) {
    const auto amp = query.find('&');
    const std::string_view part = query.substr(0, amp);
    const auto eq = part.find('=');
    if (part.substr(0, eq) == key) return eq == std::string_view::npos ? "" : part.substr(eq + 1);
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return std::nullopt;
}

std::optional<uint64_t> number(std::string_view text) {
  uint64_t v = 0;
  const auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc() || p != text.data() + text.size()) return std::nullopt;
  return v;
}

AdminJson error(std::string message) { return AdminJson{{"error", std::move(message)}}; }

// One node's view merged into the cluster answer: each entry of the view's list gets "node".
void merge(AdminJson& out, const std::string& view, const std::string& node, const AdminJson& body) {
  AdminJson status{{"node", node}};
  if (!body.is_object() || !body.contains(view) || !body[view].is_array()) {
    status["error"] = body.is_object() && body.contains("error") ? body["error"] : AdminJson("no answer");
    out["nodes"].push_back(status);
    return;
  }
  for (const auto& e : body[view]) {
    AdminJson entry{{"node", node}};
    for (const auto& [k, v] : e.items()) entry[k] = v;
    out[view].push_back(std::move(entry));
  }
  if (body.contains("bus_subscriptions")) status["bus_subscriptions"] = body["bus_subscriptions"];
  out["nodes"].push_back(status);
}

void cluster_view(Server& server, const std::string& view, uint64_t wait_ms, AdminRespond respond) {
  AdminJson out{{"scope", "cluster"}, {view, AdminJson::array()}, {"nodes", AdminJson::array()},
                {"missing", AdminJson::array()}};
  merge(out, view, server.node_id(), admin_view(server, view));
  AdminCluster* cluster = server.admin_cluster();
  if (!cluster || !cluster->clustered()) return respond(200, std::move(out));
  cluster->post([cluster, view, wait_ms, local = std::move(out), done = std::move(respond)]() mutable {
    cluster->gather(view, std::chrono::milliseconds(wait_ms),
                    [view, merged = std::move(local), reply = std::move(done)](
                        AdminCluster::Answers answers, std::vector<std::string> missing) mutable {
                      std::sort(answers.begin(), answers.end(),
                                [](const auto& a, const auto& b) { return a.node < b.node; });
                      for (const auto& a : answers) merge(merged, view, a.node, a.body);
                      for (const auto& m : missing) merged["missing"].push_back(m);
                      reply(200, std::move(merged));
                    });
  });
}

void close_connection(Server& server, std::string_view id_text, std::string_view query, std::string_view body,
                      const AdminRespond& respond) {
  CloseRequest req;
  const auto id = number(id_text);
  if (!id) return respond(404, error("no connection " + std::string(id_text)));
  req.id = *id;
  if (auto err = parse_close_body(body, req); !err.empty()) return respond(400, error(err));
  const auto node = param(query, "node");
  if (!node || *node == server.node_id()) {
    AdminAnswer a = admin_close(server, req);
    return respond(a.status, std::move(a.body));
  }
  AdminCluster* cluster = server.admin_cluster();
  if (!cluster || !cluster->clustered())
    return respond(404, error("no node '" + std::string(*node) + "': on the memory bus this node (" +
                              server.node_id() + ") is the only one"));
  cluster->post([cluster, req, target = std::string(*node), respond] {
    cluster->close_on(target, req, kCloseWait, [target, respond](std::optional<AdminAnswer> a) {
      if (!a)
        return respond(504, error("node '" + target + "' did not answer within " +
                                  std::to_string(kCloseWait.count()) + " ms (no such node, or it is unreachable)"));
      respond(a->status, std::move(a->body));
    });
  });
}

}  // namespace

void handle_admin(Server& server, std::string_view method, std::string_view path, std::string_view query,
                  std::string_view body, AdminRespond respond) {
  const bool get = method == "GET" || method == "HEAD";
  constexpr std::string_view kAdmin = "/admin/";
  const std::string_view rest = path.substr(kAdmin.size());
  if (get && is_admin_view(rest)) {
    const std::string view(rest);
    const auto scope = param(query, "scope");
    if (!scope || *scope == "node") return respond(200, admin_view(server, view));
    if (*scope != "cluster") return respond(400, error("scope is \"node\" (the default) or \"cluster\""));
    uint64_t wait_ms = kDefaultWaitMs;
    if (const auto w = param(query, "wait_ms")) {
      const auto n = number(*w);
      if (!n || *n == 0 || *n > kMaxWaitMs)
        return respond(400, error("wait_ms is from 1 to " + std::to_string(kMaxWaitMs)));
      wait_ms = *n;
    }
    return cluster_view(server, view, wait_ms, std::move(respond));
  }
  constexpr std::string_view kConn = "connections/";
  if (method == "POST" && rest.starts_with(kConn) && rest.ends_with("/close"))
    return close_connection(server, rest.substr(kConn.size(), rest.size() - kConn.size() - 6), query, body, respond);
  if (get && rest == "refusals") {
    const auto now = std::chrono::steady_clock::now();
    AdminJson list = AdminJson::array();
    for (const auto& r : server.refusals().live(now)) list.push_back(refusal_json(r, now));
    return respond(200, AdminJson{{"refusals", list}});
  }
  constexpr std::string_view kRefusal = "refusals/";
  if (method == "DELETE" && rest.starts_with(kRefusal)) {
    const std::string id(rest.substr(kRefusal.size()));
    if (!server.lift_refusal(id)) return respond(404, error("no refusal " + id + " on node " + server.node_id()));
    return respond(200, AdminJson{{"lifted", id}});
  }
  if (method == "POST" && rest == "reload") {
    const auto err = server.reload();
    if (!err.empty()) return respond(422, error(err));
    return respond(200, AdminJson{{"reloaded", true}});
  }
  respond(404, error("no admin endpoint " + std::string(method) + " " + std::string(path)));
}

}  // namespace busgate::gw
