#pragma once
// Refusals an operator set when closing a connection (POST /admin/connections/{id}/close with
// refuse_for_ms): for a while, a HELLO from the same client is refused with ERR CLOSED_BY_ADMIN.
// A refusal matches by client name within the tenant, by remote address (an IPv4 address or an IPv6
// /64, as the authentication throttle counts them) or by the credential (token digest) the closed
// connection used. Thread-safe; a HELLO costs one relaxed load while no refusal exists.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace busgate::gw {

struct Refusal {
  enum class By { name, address, token };
  std::string id;      // unique per cluster: "<node_id>.<n>"
  By by = By::name;
  std::string tenant;  // name and token refusals apply within this tenant
  std::string value;   // the client name, the address, or the token digest
  std::chrono::steady_clock::time_point until;
  std::string node;         // the node whose operator set it
  uint64_t connection = 0;  // the connection closed with it (on `node`)
};

const char* by_name(Refusal::By by);
std::optional<Refusal::By> parse_by(std::string_view text);

class RefusalList {
 public:
  explicit RefusalList(std::string node_id) : node_id_(std::move(node_id)) {}
  // A fresh cluster-unique id for a refusal made on this node.
  std::string next_id();
  // Adds (or replaces, same id) a refusal.
  void add(Refusal r);
  bool remove(std::string_view id);
  // The first live refusal matching a HELLO of `tenant` with this name, address and token digest.
  std::optional<Refusal> match(std::string_view tenant, std::string_view name, std::string_view address,
                               std::string_view token_digest, std::chrono::steady_clock::time_point now);
  std::vector<Refusal> live(std::chrono::steady_clock::time_point now);

 private:
  void prune_locked(std::chrono::steady_clock::time_point now);
  std::string node_id_;
  std::atomic<uint64_t> next_{1};
  std::atomic<size_t> count_{0};
  std::mutex mu_;
  std::vector<Refusal> list_;
};

}  // namespace busgate::gw
