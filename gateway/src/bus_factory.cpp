#include "config.hpp"
#include "memory_bus.hpp"
#include "nats_bus.hpp"

namespace busgate::gw {

std::unique_ptr<Bus> make_bus(const GatewayConfig& cfg) {
  if (cfg.bus.kind == "nats") return std::make_unique<NatsBus>(cfg);
  return std::make_unique<MemoryBus>(cfg.node_id);
}

}  // namespace busgate::gw
