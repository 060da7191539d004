#pragma once
// The admin API's requests (docs/operations.md, "Admin API"), once the bearer token was checked:
// views of this node or of every node (?scope=cluster), closing connections (on any node, with an
// optional refusal), refusals, reload.

#include <functional>
#include <string_view>

#include "admin_views.hpp"

namespace busgate::gw {

class Server;

// Called exactly once with the HTTP status and the JSON body, on any thread, possibly after
// handle_admin() returned (a cluster view waits for the other nodes' answers).
using AdminRespond = std::function<void(int status, AdminJson body)>;

void handle_admin(Server& server, std::string_view method, std::string_view path, std::string_view query,
                  std::string_view body, AdminRespond respond);

}  // namespace busgate::gw
