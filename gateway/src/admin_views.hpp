#pragma once
// What the admin API answers for this node (docs/operations.md, "Admin API"): the JSON bodies of
// GET /admin/connections, /subscriptions, /tenants, /consumers and /refusals, and closing a
// connection (with a refusal). Shared by the HTTP handler and by the answers a node gives other
// nodes on the bus (admin_cluster.hpp).

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <nlohmann/json.hpp>

#include "admin_refusals.hpp"

namespace busgate::gw {

class Server;
using AdminJson = nlohmann::ordered_json;

// The views that have a cluster form; admin_view() answers null for any other name.
bool is_admin_view(std::string_view view);
// {"connections": [...]} and so on, for this node.
AdminJson admin_view(Server& server, std::string_view view);

AdminJson refusal_json(const Refusal& r, std::chrono::steady_clock::time_point now);

struct CloseRequest {
  uint64_t id = 0;
  uint64_t refuse_for_ms = 0;     // 0: close only
  std::optional<Refusal::By> by;  // default: name when the connection has one, else address
};
// The optional body of POST /admin/connections/{id}/close: {"refuse_for_ms": N, "by": "..."}.
// Returns an error message, or "" when `out` is filled in.
std::string parse_close_body(std::string_view body, CloseRequest& out);

struct AdminAnswer {
  int status = 200;
  AdminJson body;
};
// Closes a connection of this node with ERR CLOSED_BY_ADMIN and, with refuse_for_ms, refuses its
// client (on every node the bus reaches): 404 when there is no such connection, 400 when the
// refusal cannot apply (by name, but the connection gave no name).
AdminAnswer admin_close(Server& server, const CloseRequest& req);

}  // namespace busgate::gw
