#include "memory_bus.hpp"

#include <algorithm>
#include <charconv>

namespace busgate::gw {
namespace {

std::vector<std::string_view> split(std::string_view s) {
  std::vector<std::string_view> out;
  size_t start = 0;
  while (true) {
    const size_t dot = s.find('.', start);
    if (dot == std::string_view::npos) {
      out.push_back(s.substr(start));
      return out;
    }
    out.push_back(s.substr(start, dot - start));
    start = dot + 1;
  }
}

}  // namespace

void SubjectTrie::insert(EntryPtr e) {
  Node* n = &root_;
  for (auto tok : split(e->subject)) {
    if (tok == "*") {
      if (!n->star) n->star = std::make_unique<Node>();
      n = n->star.get();
    } else if (tok == ">") {
      if (!n->gt) n->gt = std::make_unique<Node>();
      n = n->gt.get();
    } else {
      auto& c = n->children[std::string(tok)];
      if (!c) c = std::make_unique<Node>();
      n = c.get();
    }
  }
  n->entries.push_back(std::move(e));
  ++count_;
}

bool SubjectTrie::remove_at(Node* n, const std::vector<std::string_view>& toks, size_t i, const EntryPtr& e) {
  if (i == toks.size()) {
    auto it = std::find(n->entries.begin(), n->entries.end(), e);
    if (it == n->entries.end()) return false;
    n->entries.erase(it);
    return true;
  }
  std::unique_ptr<Node>* child = nullptr;
  if (toks[i] == "*") {
    child = &n->star;
  } else if (toks[i] == ">") {
    child = &n->gt;
  } else {
    auto it = n->children.find(std::string(toks[i]));
    if (it == n->children.end()) return false;
    child = &it->second;
  }
  if (!*child || !remove_at(child->get(), toks, i + 1, e)) return false;
  if ((*child)->empty()) {  // prune empty branches so churn of unique subjects does not grow the trie
    if (toks[i] == "*") n->star.reset();
    else if (toks[i] == ">") n->gt.reset();
    else n->children.erase(std::string(toks[i]));
  }
  return true;
}

void SubjectTrie::remove(const EntryPtr& e) {
  if (remove_at(&root_, split(e->subject), 0, e)) --count_;
}

void SubjectTrie::match_node(const Node* n, const std::vector<std::string_view>& toks, size_t i,
                             std::vector<EntryPtr>& out) {
  if (i == toks.size()) {
    out.insert(out.end(), n->entries.begin(), n->entries.end());
    return;
  }
  if (n->gt) out.insert(out.end(), n->gt->entries.begin(), n->gt->entries.end());
  if (!n->children.empty()) {
    // heterogeneous lookup is C++20 for unordered_map only with a transparent hash; build the key once
    auto it = n->children.find(std::string(toks[i]));
    if (it != n->children.end()) match_node(it->second.get(), toks, i + 1, out);
  }
  if (n->star) match_node(n->star.get(), toks, i + 1, out);
}

void SubjectTrie::match(std::string_view subject, std::vector<EntryPtr>& out) const {
  match_node(&root_, split(subject), 0, out);
}

MemoryBus::MemoryBus(std::string node_id) : inbox_prefix_("_INBOX." + node_id + ".") {}

uint64_t MemoryBus::subscribe(const std::string& subject, const std::string& queue, DeliverFn fn) {
  const uint64_t id = next_id_.fetch_add(1);
  auto e = std::make_shared<const SubjectTrie::Entry>(SubjectTrie::Entry{id, subject, queue, std::move(fn)});
  std::unique_lock lk(mu_);
  trie_.insert(e);
  by_id_.emplace(id, std::move(e));
  return id;
}

void MemoryBus::unsubscribe(uint64_t id) {
  std::unique_lock lk(mu_);
  auto it = by_id_.find(id);
  if (it == by_id_.end()) return;
  trie_.remove(it->second);
  by_id_.erase(it);
}

size_t MemoryBus::deliver(const BusMessagePtr& msg) {
  thread_local std::vector<SubjectTrie::EntryPtr> matched;
  matched.clear();
  {
    std::shared_lock lk(mu_);
    trie_.match(msg->subject, matched);
  }
  // Fan-out outside the lock; every target shares the one immutable message.
  size_t reached = 0;
  std::vector<SubjectTrie::EntryPtr> targets;
  targets.swap(matched);  // delivery may publish again on this thread (re-entrancy)
  std::vector<const SubjectTrie::Entry*> queued;
  for (const auto& e : targets) {
    if (e->queue.empty()) {
      e->fn(msg);
      ++reached;
    } else {
      queued.push_back(e.get());
    }
  }
  if (!queued.empty()) {
    // One member per queue group name, chosen round-robin.
    std::sort(queued.begin(), queued.end(), [](auto* a, auto* b) { return a->queue < b->queue; });
    size_t i = 0;
    while (i < queued.size()) {
      size_t j = i;
      while (j < queued.size() && queued[j]->queue == queued[i]->queue) ++j;
      const size_t pick = i + rr_.fetch_add(1, std::memory_order_relaxed) % (j - i);
      queued[pick]->fn(msg);
      ++reached;
      i = j;
    }
  }
  targets.clear();
  if (matched.capacity() < targets.capacity()) matched.swap(targets);
  return reached;
}

proto::Code MemoryBus::publish(BusMessagePtr msg, bool /*immediate: delivery is synchronous*/) {
  if (msg->subject.starts_with(inbox_prefix_)) {
    uint64_t token = 0;
    const auto rest = std::string_view(msg->subject).substr(inbox_prefix_.size());
    std::from_chars(rest.data(), rest.data() + rest.size(), token);
    ReplyFn fn;
    {
      std::lock_guard lk(req_mu_);
      auto it = requests_.find(token);
      if (it == requests_.end()) return proto::Code::ok;  // late reply: dropped
      fn = std::move(it->second);
      requests_.erase(it);
    }
    fn(proto::Code::ok, msg);
    return proto::Code::ok;
  }
  deliver(msg);
  return proto::Code::ok;
}

uint64_t MemoryBus::request(std::shared_ptr<BusMessage> msg, ReplyFn fn) {
  const uint64_t token = next_id_.fetch_add(1);
  msg->reply_to = inbox_prefix_ + std::to_string(token);
  {
    std::lock_guard lk(req_mu_);
    requests_.emplace(token, std::move(fn));
  }
  if (deliver(msg) == 0) {
    ReplyFn f;
    {
      std::lock_guard lk(req_mu_);
      auto it = requests_.find(token);
      if (it == requests_.end()) return token;
      f = std::move(it->second);
      requests_.erase(it);
    }
    f(proto::Code::no_responders, nullptr);
  }
  return token;
}

void MemoryBus::cancel_request(uint64_t token) {
  std::lock_guard lk(req_mu_);
  requests_.erase(token);
}

BusStats MemoryBus::stats() const {
  std::shared_lock lk(mu_);
  return BusStats{trie_.size(), 0};
}

}  // namespace busgate::gw
