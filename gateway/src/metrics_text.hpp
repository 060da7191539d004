#pragma once
// /metrics: the node's metrics in the Prometheus text exposition format 0.0.4 (docs/operations.md,
// "Metrics"). Series labelled by tenant exist only for configured tenants.

#include <string>

namespace busgate::gw {

class Server;

std::string render_metrics(Server& server);

}  // namespace busgate::gw
