#include <spdlog/spdlog.h>

#include "config.hpp"
#include "memory_bus.hpp"

namespace busgate::gw {

std::unique_ptr<Bus> make_bus(const GatewayConfig& cfg) {
  if (cfg.bus.kind == "memory") return std::make_unique<MemoryBus>(cfg.node_id);
  throw ConfigError("bus.kind: '" + cfg.bus.kind + "' is not available in this build");
}

}  // namespace busgate::gw
