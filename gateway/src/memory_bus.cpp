#include "memory_bus.hpp"

#include <openssl/rand.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <cstdlib>

#include "busgate/protocol/subject.hpp"

namespace busgate::gw {

uint64_t random_token() {
  // 64 tokens per draw from the CSPRNG: one RAND_bytes call every 64 requests on a thread.
  thread_local std::array<uint64_t, 64> pool;
  thread_local size_t left = 0;
  for (;;) {
    if (left == 0) {
      if (RAND_bytes(reinterpret_cast<unsigned char*>(pool.data()), static_cast<int>(sizeof pool)) != 1) {
        // Guessable inboxes would let any bus peer answer requests: better no gateway at all.
        spdlog::critical("the system's random number generator failed (RAND_bytes): stopping");
        std::abort();
      }
      left = pool.size();
    }
    const uint64_t t = pool[--left];
    if (t != 0) return t;
  }
}

namespace {
constexpr char kBase62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
}

void append_inbox_token(std::string& out, uint64_t token) {
  char buf[kInboxTokenChars];
  for (size_t i = kInboxTokenChars; i-- > 0;) {
    buf[i] = kBase62[token % 62];
    token /= 62;
  }
  out.append(buf, kInboxTokenChars);
}

bool parse_inbox_token(std::string_view text, uint64_t& token) {
  if (text.size() != kInboxTokenChars) return false;
  uint64_t v = 0;
  for (char c : text) {
    unsigned d;
    if (c >= '0' && c <= '9') d = static_cast<unsigned>(c - '0');
    else if (c >= 'A' && c <= 'Z') d = static_cast<unsigned>(c - 'A') + 10;
    else if (c >= 'a' && c <= 'z') d = static_cast<unsigned>(c - 'a') + 36;
    else return false;
    if (__builtin_mul_overflow(v, uint64_t{62}, &v) || __builtin_add_overflow(v, uint64_t{d}, &v)) return false;
  }
  token = v;
  return true;
}

BusMessage::BusMessage(std::string_view subject_in, std::string_view reply_in, std::string_view headers_in,
                       std::string_view payload_in) {
  storage_.reserve(subject_in.size() + reply_in.size() + headers_in.size() + payload_in.size() + 4);
  auto put = [this](std::string_view part) {
    const size_t at = storage_.size();
    storage_.append(part);
    storage_.push_back('\0');
    return at;
  };
  const size_t s = put(subject_in), r = put(reply_in), h = put(headers_in), p = put(payload_in);
  subject = {storage_.data() + s, subject_in.size()};
  reply_to = {storage_.data() + r, reply_in.size()};
  headers = {storage_.data() + h, headers_in.size()};
  payload = {storage_.data() + p, payload_in.size()};
}

void BusMessage::set_reply_to(std::string reply) {
  reply_storage_ = std::move(reply);
  reply_to = reply_storage_;
}

void SubjectTrie::insert(EntryPtr e) {
  Node* n = &root_;
  for (auto tok : proto::subject_tokens(e->subject)) {
    if (tok == "*") {
      if (!n->star) n->star = std::make_unique<Node>();
      n = n->star.get();
    } else if (tok == ">") {
      if (!n->gt) n->gt = std::make_unique<Node>();
      n = n->gt.get();
    } else {
      auto it = n->children.find(tok);
      if (it == n->children.end()) it = n->children.emplace(std::string(tok), std::make_unique<Node>()).first;
      n = it->second.get();
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
    auto it = n->children.find(toks[i]);
    if (it == n->children.end()) return false;
    child = &it->second;
  }
  if (!*child || !remove_at(child->get(), toks, i + 1, e)) return false;
  if ((*child)->empty()) {  // prune empty branches so churn of unique subjects does not grow the trie
    if (toks[i] == "*") n->star.reset();
    else if (toks[i] == ">") n->gt.reset();
    else n->children.erase(n->children.find(toks[i]));
  }
  return true;
}

void SubjectTrie::remove(const EntryPtr& e) {
  if (remove_at(&root_, proto::subject_tokens(e->subject), 0, e)) --count_;
}

void SubjectTrie::match_node(const Node* n, const std::string_view* toks, size_t count, size_t i,
                             std::vector<EntryPtr>& out) {
  if (i == count) {
    out.insert(out.end(), n->entries.begin(), n->entries.end());
    return;
  }
  if (n->gt) out.insert(out.end(), n->gt->entries.begin(), n->gt->entries.end());
  if (!n->children.empty()) {
    auto it = n->children.find(toks[i]);
    if (it != n->children.end()) match_node(it->second.get(), toks, count, i + 1, out);
  }
  if (n->star) match_node(n->star.get(), toks, count, i + 1, out);
}

void SubjectTrie::match(std::string_view subject, std::vector<EntryPtr>& out) const {
  // Subjects are at most 256 bytes, so at most 128 tokens: split on the stack.
  std::string_view toks[129];
  size_t count = 0;
  size_t start = 0;
  while (count < 129) {
    const size_t dot = subject.find('.', start);
    toks[count++] = subject.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  match_node(&root_, toks, count, 0, out);
}

MemoryBus::MemoryBus(std::string node_id)
    : inbox_prefix_("_INBOX." + node_id + "."),
      durable_([this](BusMessagePtr m) { publish(std::move(m), false); },
               [this](BusMessagePtr m) { deliver(m); }) {}

uint64_t MemoryBus::subscribe(const std::string& subject, const std::string& queue, DeliverFn fn) {
  const uint64_t id = next_id_.fetch_add(1);
  auto e = std::make_shared<const SubjectTrie::Entry>(SubjectTrie::Entry{id, subject, queue, std::move(fn)});
  std::unique_lock lk(mu_);
  trie_.insert(e);
  by_id_.emplace(id, std::move(e));
  gen_.fetch_add(1, std::memory_order_release);
  return id;
}

void MemoryBus::unsubscribe(uint64_t id) {
  std::unique_lock lk(mu_);
  auto it = by_id_.find(id);
  if (it == by_id_.end()) return;
  trie_.remove(it->second);
  by_id_.erase(it);
  gen_.fetch_add(1, std::memory_order_release);
}

namespace {

// Each thread remembers the matches of the last few subjects it published to, valid while the bus's
// subscriptions are unchanged (the generation). A steady stream to one subject then costs no trie
// walk and no lock. The matches are immutable and shared, so a delivery that publishes again on the
// same thread (and so may replace a slot) keeps its own list alive.
struct MatchCache {
  static constexpr size_t kSlots = 8;
  using Matches = std::shared_ptr<const std::vector<SubjectTrie::EntryPtr>>;
  const void* bus = nullptr;
  uint64_t gen = 0;
  std::array<std::string, kSlots> subject;
  std::array<Matches, kSlots> matches;
  size_t next = 0;
};

}  // namespace

size_t MemoryBus::deliver(const BusMessagePtr& msg) {
  thread_local MatchCache cache;
  const uint64_t gen = gen_.load(std::memory_order_acquire);
  if (cache.bus != this || cache.gen != gen) {
    cache.bus = this;
    cache.gen = gen;
    for (auto& m : cache.matches) m.reset();
  }
  MatchCache::Matches targets;
  for (size_t k = 0; k < MatchCache::kSlots; ++k) {
    if (cache.matches[k] && cache.subject[k] == msg->subject) {
      targets = cache.matches[k];
      break;
    }
  }
  if (!targets) {
    auto fresh = std::make_shared<std::vector<SubjectTrie::EntryPtr>>();
    {
      std::shared_lock lk(mu_);
      trie_.match(msg->subject, *fresh);
    }
    const size_t k = cache.next++ % MatchCache::kSlots;
    cache.subject[k].assign(msg->subject);
    cache.matches[k] = fresh;
    targets = std::move(fresh);
  }
  // Fan-out outside the lock; every target shares the one immutable message.
  size_t reached = 0;
  thread_local std::vector<const SubjectTrie::Entry*> queued_scratch;
  std::vector<const SubjectTrie::Entry*> queued;
  queued.swap(queued_scratch);  // re-entrancy: a nested delivery gets its own vector
  queued.clear();
  for (const auto& e : *targets) {
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
  queued.clear();
  if (queued_scratch.capacity() < queued.capacity()) queued_scratch.swap(queued);
  return reached;
}

proto::Code MemoryBus::publish(BusMessagePtr msg, bool /*immediate: delivery is synchronous*/) {
  if (msg->subject.starts_with(inbox_prefix_)) {
    uint64_t token = 0;  // never a request's
    parse_inbox_token(msg->subject.substr(inbox_prefix_.size()), token);
    if (ReplyFn fn = requests_.take(token)) fn(proto::Code::ok, msg);  // else a late or unknown reply: dropped
    return proto::Code::ok;
  }
  durable_.on_publish(msg);
  deliver(msg);
  return proto::Code::ok;
}

uint64_t MemoryBus::request(std::shared_ptr<BusMessage> msg, ReplyFn fn) {
  const uint64_t token = requests_.add(std::move(fn));
  msg->set_reply_to(inbox_subject(inbox_prefix_, token));
  if (deliver(msg) == 0)
    if (ReplyFn f = requests_.take(token)) f(proto::Code::no_responders, nullptr);
  return token;
}

void MemoryBus::cancel_request(uint64_t token) { requests_.cancel(token); }

BusStats MemoryBus::stats() const {
  std::shared_lock lk(mu_);
  return BusStats{trie_.size(), 0};
}

}  // namespace busgate::gw
