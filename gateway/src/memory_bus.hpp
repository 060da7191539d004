#pragma once
// In-process broker: a subject trie with '*' and '>' matching, queue groups that deliver each message
// to exactly one member, and request/reply through one node inbox.

#include <atomic>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "bus.hpp"
#include "memory_durable.hpp"

namespace busgate::gw {

class SubjectTrie {
 public:
  struct Entry {
    uint64_t id;
    std::string subject;
    std::string queue;
    DeliverFn fn;
  };
  using EntryPtr = std::shared_ptr<const Entry>;

  void insert(EntryPtr e);
  void remove(const EntryPtr& e);
  // Appends every entry whose pattern matches the literal subject.
  void match(std::string_view subject, std::vector<EntryPtr>& out) const;
  size_t size() const { return count_; }

 private:
  // Transparent hashing: look children up by string_view without building a std::string.
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  struct Node {
    std::unordered_map<std::string, std::unique_ptr<Node>, Hash, std::equal_to<>> children;
    std::unique_ptr<Node> star;
    std::unique_ptr<Node> gt;
    std::vector<EntryPtr> entries;
    bool empty() const { return children.empty() && !star && !gt && entries.empty(); }
  };
  static void match_node(const Node* n, const std::string_view* toks, size_t count, size_t i,
                         std::vector<EntryPtr>& out);
  static bool remove_at(Node* n, const std::vector<std::string_view>& toks, size_t i, const EntryPtr& e);
  Node root_;
  size_t count_ = 0;
};

class MemoryBus final : public Bus {
 public:
  explicit MemoryBus(std::string node_id);
  uint64_t subscribe(const std::string& subject, const std::string& queue, DeliverFn fn) override;
  void unsubscribe(uint64_t id) override;
  proto::Code publish(BusMessagePtr msg, bool immediate) override;
  uint64_t request(std::shared_ptr<BusMessage> msg, ReplyFn fn) override;
  void cancel_request(uint64_t token) override;
  // Delivery is synchronous: whatever was published before has been delivered already.
  void confirm(CodeFn done) override { done(proto::Code::ok); }
  bool healthy() const override { return true; }
  const char* kind() const override { return "memory"; }
  BusStats stats() const override;
  DurableBus* durable() override { return &durable_; }

 private:
  size_t deliver(const BusMessagePtr& msg);  // returns the number of subscriptions it reached

  std::string inbox_prefix_;
  mutable std::shared_mutex mu_;
  SubjectTrie trie_;
  std::unordered_map<uint64_t, SubjectTrie::EntryPtr> by_id_;
  std::atomic<uint64_t> next_id_{1};
  std::atomic<uint64_t> rr_{0};
  std::atomic<uint64_t> gen_{0};  // bumped by every subscribe and unsubscribe (match caches)

  ReplyTable requests_;
  MemoryDurable durable_;  // last: its timer thread stops before the rest goes
};

}  // namespace busgate::gw
