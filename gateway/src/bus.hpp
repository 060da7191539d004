#pragma once
// The bus interface the Session talks to. Implementations: MemoryBus (in-process, the embedded
// default) and, in production, a NATS-backed bus. Callbacks may run on any thread.

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <string_view>
#include <vector>

#include "busgate/protocol/errors.hpp"

namespace busgate::gw {

class DurableBus;

// One message on the bus. Shared, immutable once published: a fan-out to N subscribers shares it.
// Its four parts live in one buffer (one allocation besides the object), each followed by a NUL so
// they can be handed to C APIs.
class BusMessage {
 public:
  BusMessage(std::string_view subject, std::string_view reply_to, std::string_view headers, std::string_view payload);
  BusMessage(const BusMessage&) = delete;
  BusMessage& operator=(const BusMessage&) = delete;

  std::string_view subject;   // bus subject (already mapped into a namespace)
  std::string_view reply_to;  // bus reply subject, empty for none
  std::string_view headers;   // msgpack-encoded headers map (empty for none); includes busgate-tenant
  std::string_view payload;

  // Requests: the bus sets the reply subject in its node inbox before publishing.
  void set_reply_to(std::string reply);

 private:
  std::string storage_;
  std::string reply_storage_;
};
using BusMessagePtr = std::shared_ptr<const BusMessage>;
using DeliverFn = std::function<void(const BusMessagePtr&)>;
using ReplyFn = std::function<void(proto::Code status, const BusMessagePtr& reply)>;

// Request inbox tokens. A request's reply subject is `_INBOX.<node_id>.<token>`; the token is a
// random 64-bit value from OpenSSL's CSPRNG (drawn in batches per thread, so it costs about as much
// as a counter), so a peer that has seen any number of inboxes cannot guess another one and answer
// in the responder's place. Never 0.
uint64_t random_token();
// A token in a subject: exactly 11 base-62 characters (0-9, A-Z, a-z), most significant first.
constexpr size_t kInboxTokenChars = 11;
void append_inbox_token(std::string& out, uint64_t token);
// `prefix` (a node inbox prefix, `_INBOX.<node_id>.`) followed by the token.
inline std::string inbox_subject(std::string_view prefix, uint64_t token) {
  std::string s;
  s.reserve(prefix.size() + kInboxTokenChars);
  s.append(prefix);
  append_inbox_token(s, token);
  return s;
}
// The token written by append_inbox_token(); false for anything else (another length, another
// character, a value above 64 bits).
bool parse_inbox_token(std::string_view text, uint64_t& token);

// The pending requests of a bus's node inbox: token → callback, each callback taken at most once
// (by a reply, a no-responders answer, or never after cancel). Thread-safe.
class ReplyTable {
 public:
  // Registers `fn` under a fresh random token (random_token(), drawn again on the astronomically
  // unlikely collision with a pending one) and returns the token.
  uint64_t add(ReplyFn fn) {
    std::lock_guard lk(mu_);
    for (;;) {
      const uint64_t token = random_token();
      if (pending_.try_emplace(token, std::move(fn)).second) return token;
    }
  }
  // The callback for `token`, removed; empty when it was already taken or cancelled.
  ReplyFn take(uint64_t token) {
    std::lock_guard lk(mu_);
    auto it = pending_.find(token);
    if (it == pending_.end()) return {};
    ReplyFn fn = std::move(it->second);
    pending_.erase(it);
    return fn;
  }
  void cancel(uint64_t token) { take(token); }
  // Every pending callback, removed (the bus lost its connection: they all fail).
  std::vector<ReplyFn> take_all() {
    std::vector<ReplyFn> fns;
    std::lock_guard lk(mu_);
    fns.reserve(pending_.size());
    for (auto& [token, fn] : pending_) fns.push_back(std::move(fn));
    pending_.clear();
    return fns;
  }

 private:
  std::mutex mu_;
  std::unordered_map<uint64_t, ReplyFn> pending_;
};

struct BusStats {
  uint64_t subscriptions = 0;  // subscriptions held on the bus (after any dedup)
  uint64_t reconnects = 0;
  uint64_t headers_dropped = 0;  // headers from the bus left out because they break the spec's rules
  uint64_t subscriptions_refused = 0;  // subscriptions the bus server refused (permissions of the gateway's own user)
  uint64_t publishes_refused = 0;      // publishes the bus server refused (dropped)
};
// Answers subscribe_async() and confirm(): ok, or why not.
using CodeFn = std::function<void(proto::Code)>;

class Bus {
 public:
  virtual ~Bus() = default;
  // Returns an id for unsubscribe (0: the bus refused). `queue` empty for a plain subscription. After unsubscribe
  // returns, a delivery already in progress may still call fn once; callers must tolerate that.
  virtual uint64_t subscribe(const std::string& subject, const std::string& queue, DeliverFn fn) = 0;
  // The same, without waiting: `done` runs once (any thread, possibly before this returns) with ok
  // when the subscription is live on the bus (or the bus is down and will subscribe when it is
  // back), or with the reason the bus server refused it (permission_denied: the gateway's own bus
  // user may not subscribe there). A refused subscription delivers nothing and is gone: its id
  // needs no unsubscribe (one is harmless).
  virtual uint64_t subscribe_async(const std::string& subject, const std::string& queue, DeliverFn fn, CodeFn done) {
    const uint64_t id = subscribe(subject, queue, std::move(fn));
    done(id ? proto::Code::ok : proto::Code::bus_unavailable);
    return id;
  }
  // The same, for a caller that only waits: `ready` runs once the answer is known, whatever it is.
  uint64_t subscribe_async(const std::string& subject, const std::string& queue, DeliverFn fn,
                           std::function<void()> ready) {
    return subscribe_async(subject, queue, std::move(fn), CodeFn([ready = std::move(ready)](proto::Code) { ready(); }));
  }
  virtual void unsubscribe(uint64_t id) = 0;
  // ok, or bus_unavailable when the message was not accepted. `immediate`: write it to the bus now
  // rather than with the next batch (a PUB whose sender waits for an OK).
  virtual proto::Code publish(BusMessagePtr msg, bool immediate) = 0;
  // publish() of a message given in parts, for a bus that need not keep it: one that only writes it
  // out (NATS) copies it straight into its write buffer instead of building a BusMessage.
  virtual proto::Code publish_copy(std::string_view subject, std::string_view reply_to, std::string_view headers,
                                   std::string_view payload, bool immediate) {
    return publish(std::make_shared<const BusMessage>(subject, reply_to, headers, payload), immediate);
  }
  // Sends msg with a reply subject in this node's inbox and calls fn once with the first reply
  // (status ok), or no_responders / bus_unavailable. Timeouts are the caller's: cancel_request()
  // then guarantees fn is not called later. Returns a token for cancel_request.
  // A request still waiting when the bus loses its connection gets bus_unavailable at once.
  virtual uint64_t request(std::shared_ptr<BusMessage> msg, ReplyFn fn) = 0;
  virtual void cancel_request(uint64_t token) = 0;
  // A barrier for publishes: `done` runs once, with ok when everything published on this bus
  // before the call (from any thread) has been received by the bus server, or with bus_unavailable
  // when that cannot be known (the bus is down, or lost its connection first). It runs on the bus's
  // own thread (NATS: the link thread; at once, on the calling thread, when the bus is down or has
  // no server) and must not block. Calls made close together share one round trip.
  virtual void confirm(CodeFn done) { done(proto::Code::ok); }
  virtual bool healthy() const = 0;
  // Why the bus keeps the node from being ready when that is not a lost connection (for /readyz):
  // empty otherwise. NATS: another live node uses this node's id on the bus.
  virtual std::string not_ready_reason() const { return {}; }
  // The largest message (payload and headers) the bus carries; 0 when the bus has no limit.
  virtual size_t max_message() const { return 0; }
  virtual const char* kind() const = 0;
  // Flow control: true while the bus holds more than it wants for the network. Publishers should
  // stop reading their clients then, until the function given to when_drained() runs (any thread;
  // at once when not congested).
  virtual bool congested() const { return false; }
  virtual void when_drained(std::function<void()> fn) { fn(); }
  virtual BusStats stats() const = 0;
  // Durable work queues (durable.hpp); nullptr when this bus has none.
  virtual DurableBus* durable() { return nullptr; }
};

}  // namespace busgate::gw
