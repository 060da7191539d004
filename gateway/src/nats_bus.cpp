#include "nats_bus.hpp"

#include <nats/nats.h>
#include <spdlog/spdlog.h>

#include <charconv>
#include <stdexcept>

#include "busgate/protocol/msgpack.hpp"
#include "busgate/protocol/subject.hpp"

namespace busgate::gw {

using proto::Code;

struct NatsBus::Interest {
  NatsBus* bus = nullptr;
  std::string subject;
  std::string queue;
  natsSubscription* sub = nullptr;
  std::mutex mu;
  struct Local {
    uint64_t id;
    std::shared_ptr<DeliverFn> fn;
    // Messages already queued for this bus subscription when the local subscriber joined: they were
    // published before its SUB, so they are not delivered to it.
    uint64_t skip;
  };
  std::vector<Local> locals;
  std::atomic<uint64_t> rr{0};
};

namespace {

constexpr int kPendingMsgs = 1000000;
constexpr int kPendingBytes = 512 * 1024 * 1024;

void check(natsStatus s, const std::string& what) {
  if (s != NATS_OK && s != NATS_NOT_YET_CONNECTED)
    throw std::runtime_error("NATS: " + what + ": " + natsStatus_GetText(s));
}

void on_msg_cb(natsConnection*, natsSubscription*, natsMsg* m, void* closure) {
  auto* in = static_cast<NatsBus::Interest*>(closure);
  in->bus->on_message(*in, m);
}

void on_complete_cb(void* closure) { delete static_cast<NatsBus::Interest*>(closure); }

void on_inbox_cb(natsConnection*, natsSubscription*, natsMsg* m, void* closure) {
  static_cast<NatsBus*>(closure)->on_inbox(m);
}

void on_disconnected(natsConnection* nc, void* closure) {
  static_cast<NatsBus*>(closure)->on_connection_event("disconnected", nc);
}
void on_reconnected(natsConnection* nc, void* closure) {
  static_cast<NatsBus*>(closure)->on_connection_event("reconnected", nc);
}
void on_connected(natsConnection* nc, void* closure) {
  static_cast<NatsBus*>(closure)->on_connection_event("connected", nc);
}
void on_error(natsConnection*, natsSubscription* sub, natsStatus err, void*) {
  spdlog::warn("nats: asynchronous error: {}{}", natsStatus_GetText(err),
               sub ? " (a subscription fell behind; messages were dropped)" : "");
}

// cnats 3.4.1 misparses a header whose value is empty (it takes the next line as the value), so
// empty values do not travel as NATS headers: their keys go, comma-separated, in this header, and the
// receiving gateway restores them. Clients cannot set or see it (the busgate- prefix is reserved).
constexpr const char* kEmptyHeaders = "busgate-empty";

// NATS headers → a msgpack map (first value of each key).
std::string headers_of(natsMsg* m) {
  const char** keys = nullptr;
  int n = 0;
  if (natsMsgHeader_Keys(m, &keys, &n) != NATS_OK || n == 0) return {};
  std::string out;
  proto::mp::Writer w(out);
  std::vector<std::pair<std::string_view, std::string_view>> kv;
  std::string_view empties;
  for (int i = 0; i < n; ++i) {
    const char* v = nullptr;
    if (natsMsgHeader_Get(m, keys[i], &v) != NATS_OK || !v) continue;
    if (std::string_view(keys[i]) == kEmptyHeaders) empties = v;
    else kv.emplace_back(keys[i], v);
  }
  size_t pos = 0;
  while (pos < empties.size()) {
    size_t comma = empties.find(',', pos);
    if (comma == std::string_view::npos) comma = empties.size();
    if (comma > pos) kv.emplace_back(empties.substr(pos, comma - pos), std::string_view{});
    pos = comma + 1;
  }
  if (kv.empty()) {
    free(keys);
    return {};
  }
  w.map_header(static_cast<uint32_t>(kv.size()));
  for (const auto& [k, v] : kv) {
    w.str(proto::is_valid_utf8(k) ? k : std::string_view("?"));
    w.str(proto::is_valid_utf8(v) ? v : std::string_view("?"));
  }
  free(keys);  // the views above point into the message, not into this array
  return out;
}

BusMessagePtr to_bus_message(natsMsg* m) {
  const char* reply = natsMsg_GetReply(m);
  return std::make_shared<const BusMessage>(
      natsMsg_GetSubject(m), reply ? std::string_view(reply) : std::string_view{}, headers_of(m),
      std::string_view(natsMsg_GetData(m), static_cast<size_t>(natsMsg_GetDataLength(m))));
}

}  // namespace

NatsBus::NatsBus(const GatewayConfig& cfg) : node_id_(cfg.node_id), inbox_prefix_("_INBOX." + cfg.node_id + ".") {
  nats_Open(-1);
  nats_SetMessageDeliveryPoolSize(static_cast<int>(std::max(1u, cfg.threads ? cfg.threads : 2u)));
  bulk_ = connect(cfg, cfg.bus.name, false);
  fast_ = connect(cfg, cfg.bus.name + "-rr", true);
  check(natsConnection_Subscribe(&inbox_sub_, fast_, (inbox_prefix_ + "*").c_str(), on_inbox_cb, this),
        "subscribe to the node inbox");
  natsSubscription_SetPendingLimits(inbox_sub_, kPendingMsgs, kPendingBytes);
}

NatsBus::~NatsBus() {
  if (inbox_sub_) natsSubscription_Destroy(inbox_sub_);
  for (auto* nc : {bulk_, fast_}) {
    if (!nc) continue;
    natsConnection_Close(nc);
    natsConnection_Destroy(nc);
  }
}

natsConnection* NatsBus::connect(const GatewayConfig& cfg, const std::string& name, bool send_asap) {
  natsOptions* o = nullptr;
  check(natsOptions_Create(&o), "options");
  std::vector<const char*> servers;
  for (const auto& s : cfg.bus.servers) servers.push_back(s.c_str());
  check(natsOptions_SetServers(o, servers.data(), static_cast<int>(servers.size())), "bus.servers");
  check(natsOptions_SetName(o, name.c_str()), "bus.name");
  if (!cfg.bus.user.empty()) check(natsOptions_SetUserInfo(o, cfg.bus.user.c_str(), cfg.bus.password.c_str()), "bus.user");
  if (!cfg.bus.token.empty()) check(natsOptions_SetToken(o, cfg.bus.token.c_str()), "bus.token");
  if (!cfg.bus.creds_file.empty())
    check(natsOptions_SetUserCredentialsFromFiles(o, cfg.bus.creds_file.c_str(), nullptr), "bus.creds_file");
  if (!cfg.bus.tls_ca.empty() || !cfg.bus.tls_cert.empty()) {
    check(natsOptions_SetSecure(o, true), "bus.tls");
    if (!cfg.bus.tls_ca.empty()) check(natsOptions_LoadCATrustedCertificates(o, cfg.bus.tls_ca.c_str()), "bus.tls.ca");
    if (!cfg.bus.tls_cert.empty())
      check(natsOptions_LoadCertificatesChain(o, cfg.bus.tls_cert.c_str(), cfg.bus.tls_key.c_str()), "bus.tls.cert");
  }
  check(natsOptions_SetSendAsap(o, send_asap), "send asap");
  check(natsOptions_SetMaxReconnect(o, -1), "max reconnect");
  check(natsOptions_SetReconnectWait(o, 200), "reconnect wait");
  check(natsOptions_SetPingInterval(o, 2000), "ping interval");
  check(natsOptions_SetMaxPingsOut(o, 2), "max pings out");
  check(natsOptions_SetTimeout(o, 2000), "connect timeout");
  check(natsOptions_UseGlobalMessageDelivery(o, true), "global delivery");
  check(natsOptions_SetDisconnectedCB(o, on_disconnected, this), "callbacks");
  check(natsOptions_SetReconnectedCB(o, on_reconnected, this), "callbacks");
  check(natsOptions_SetErrorHandler(o, on_error, this), "callbacks");
  check(natsOptions_SetRetryOnFailedConnect(o, true, on_connected, this), "retry");
  natsConnection* nc = nullptr;
  const natsStatus s = natsConnection_Connect(&nc, o);
  natsOptions_Destroy(o);
  check(s, "connect to " + (cfg.bus.servers.empty() ? std::string("?") : cfg.bus.servers.front()));
  if (s == NATS_NOT_YET_CONNECTED)
    spdlog::warn("nats: {} not reachable yet; retrying in the background (not ready until connected)",
                 cfg.bus.servers.front());
  else
    spdlog::info("nats: connection '{}' established", name);
  return nc;
}

void NatsBus::on_connection_event(const char* what, natsConnection* nc) {
  if (std::string_view(what) == "reconnected") reconnects_.fetch_add(1);
  char url[256] = {0};
  natsConnection_GetConnectedUrl(nc, url, sizeof url);
  spdlog::info("nats: {} {}", what, url);
}

bool NatsBus::healthy() const {
  return bulk_ && fast_ && natsConnection_Status(bulk_) == NATS_CONN_STATUS_CONNECTED &&
         natsConnection_Status(fast_) == NATS_CONN_STATUS_CONNECTED;
}

size_t NatsBus::max_message() const {
  if (fast_ && natsConnection_Status(fast_) == NATS_CONN_STATUS_CONNECTED) {
    const int64_t m = natsConnection_GetMaxPayload(fast_);
    if (m > 0) max_payload_.store(m);
  }
  const int64_t m = max_payload_.load();
  return m > 0 ? static_cast<size_t>(m) : 1048576;  // nats-server's default until we know better
}

BusStats NatsBus::stats() const {
  std::lock_guard lk(mu_);
  return BusStats{interests_.size() + 1, reconnects_.load()};
}

uint64_t NatsBus::subscribe(const std::string& subject, const std::string& queue, DeliverFn fn) {
  const uint64_t id = next_id_.fetch_add(1);
  auto local = std::make_shared<DeliverFn>(std::move(fn));
  // Publishes batched on the other connection before this SUB must reach the server first, so that
  // a client's earlier PUB is never delivered to its later SUB (one round trip).
  if (natsConnection_Status(bulk_) == NATS_CONN_STATUS_CONNECTED) natsConnection_FlushTimeout(bulk_, 1000);
  int added = 0;
  {
    std::lock_guard lk(mu_);
    added = add_local(subject, queue, id, std::move(local));
  }
  if (added < 0) return 0;
  // A new bus subscription is live once the server has processed it: one round trip, outside the
  // lock, so the client's OK means what it says. Skipped while disconnected (cnats resubscribes).
  const bool connected = natsConnection_Status(fast_) == NATS_CONN_STATUS_CONNECTED;
  if (connected) natsConnection_FlushTimeout(fast_, 1000);
  if (added == 0) {
    // Joined an existing bus subscription: after the round trip, everything the server sent before
    // this SUB is in the subscription's queue; skip exactly that much.
    std::lock_guard lk(mu_);
    auto it = by_local_id_.find(id);
    if (it != by_local_id_.end()) {
      Interest* in = it->second;
      int pending = 0;
      if (connected) natsSubscription_GetPending(in->sub, &pending, nullptr);
      std::lock_guard il(in->mu);
      for (auto& l : in->locals)
        if (l.id == id) l.skip = static_cast<uint64_t>(std::max(pending, 0));
    }
  }
  return id;
}

int NatsBus::add_local(const std::string& subject, const std::string& queue, uint64_t id,
                       std::shared_ptr<DeliverFn> local) {
  bool created = false;
  auto& slot = interests_[{subject, queue}];
  if (!slot) {
    auto in = std::make_unique<Interest>();
    in->bus = this;
    in->subject = subject;
    in->queue = queue;
    natsStatus s = queue.empty()
                       ? natsConnection_Subscribe(&in->sub, fast_, subject.c_str(), on_msg_cb, in.get())
                       : natsConnection_QueueSubscribe(&in->sub, fast_, subject.c_str(), queue.c_str(), on_msg_cb,
                                                       in.get());
    if (s != NATS_OK) {
      interests_.erase({subject, queue});
      spdlog::error("nats: subscribe to {} failed: {}", subject, natsStatus_GetText(s));
      return -1;
    }
    natsSubscription_SetPendingLimits(in->sub, kPendingMsgs, kPendingBytes);
    natsSubscription_SetOnCompleteCB(in->sub, on_complete_cb, in.get());
    spdlog::debug("nats: bus subscription {}{}{}", subject, queue.empty() ? "" : " queue ", queue);
    slot = in.release();
    created = true;
  }
  {
    std::lock_guard il(slot->mu);
    // A subscriber joining an existing bus subscription skips everything before it (set after a
    // flush in subscribe(); until then it receives nothing).
    slot->locals.push_back({id, std::move(local), created ? 0 : UINT64_MAX});
  }
  by_local_id_[id] = slot;
  return created ? 1 : 0;
}

void NatsBus::unsubscribe(uint64_t id) {
  std::lock_guard lk(mu_);
  auto it = by_local_id_.find(id);
  if (it == by_local_id_.end()) return;
  Interest* in = it->second;
  by_local_id_.erase(it);
  bool last = false;
  {
    std::lock_guard il(in->mu);
    std::erase_if(in->locals, [id](const auto& l) { return l.id == id; });
    last = in->locals.empty();
  }
  if (!last) return;
  // The last local subscriber left: release the bus subscription. The Interest is freed by the
  // subscription's on-complete callback, after its last message has been dispatched.
  interests_.erase({in->subject, in->queue});
  natsSubscription_Unsubscribe(in->sub);
  natsSubscription_Destroy(in->sub);
}

void NatsBus::on_message(Interest& in, natsMsg* m) {
  thread_local std::vector<std::shared_ptr<DeliverFn>> targets;
  targets.clear();
  {
    std::lock_guard il(in.mu);
    if (in.locals.empty()) {
      natsMsg_Destroy(m);
      return;
    }
    if (in.queue.empty()) {
      for (auto& l : in.locals) {
        if (l.skip > 0) {
          --l.skip;
          continue;
        }
        targets.push_back(l.fn);
      }
    } else {  // NATS picked this node for the group; pick one local member
      targets.push_back(in.locals[in.rr.fetch_add(1, std::memory_order_relaxed) % in.locals.size()].fn);
    }
  }
  const BusMessagePtr msg = to_bus_message(m);
  natsMsg_Destroy(m);
  for (const auto& fn : targets) (*fn)(msg);
  targets.clear();
}

proto::Code NatsBus::send(natsConnection* nc, const BusMessage& msg) {
  if (natsConnection_Status(nc) != NATS_CONN_STATUS_CONNECTED) return Code::bus_unavailable;
  natsMsg* m = nullptr;
  // The views are NUL-terminated (BusMessage keeps a NUL after each part).
  if (natsMsg_Create(&m, msg.subject.data(), msg.reply_to.empty() ? nullptr : msg.reply_to.data(),
                     msg.payload.data(), static_cast<int>(msg.payload.size())) != NATS_OK)
    return Code::internal_error;
  if (!msg.headers.empty()) {
    proto::mp::Reader rd(msg.headers);
    uint32_t n = 0;
    std::string empties;
    if (rd.read_map(n)) {
      for (uint32_t i = 0; i < n; ++i) {
        std::string_view k, v;
        if (!rd.read_str(k) || !rd.read_str(v)) break;
        if (v.empty()) {
          if (!empties.empty()) empties += ',';
          empties += k;
          continue;
        }
        natsMsgHeader_Set(m, std::string(k).c_str(), std::string(v).c_str());
      }
    }
    if (!empties.empty()) natsMsgHeader_Set(m, kEmptyHeaders, empties.c_str());
  }
  const natsStatus s = natsConnection_PublishMsg(nc, m);
  natsMsg_Destroy(m);
  if (s == NATS_OK) return Code::ok;
  return s == NATS_MAX_PAYLOAD ? Code::payload_too_large : Code::bus_unavailable;
}

proto::Code NatsBus::publish(BusMessagePtr msg, bool immediate) {
  // Replies (to request inboxes) and acknowledged PUBs take the write-at-once connection; the rest
  // is batched.
  const bool now = immediate || msg->subject.starts_with("_INBOX.");
  return send(now ? fast_ : bulk_, *msg);
}

uint64_t NatsBus::request(std::shared_ptr<BusMessage> msg, ReplyFn fn) {
  const uint64_t token = next_id_.fetch_add(1);
  msg->set_reply_to(inbox_prefix_ + std::to_string(token));
  requests_.add(token, std::move(fn));
  if (const Code c = send(fast_, *msg); c != Code::ok)
    if (ReplyFn f = requests_.take(token)) f(c, nullptr);
  return token;
}

void NatsBus::cancel_request(uint64_t token) { requests_.cancel(token); }

void NatsBus::on_inbox(natsMsg* m) {
  const std::string_view subject = natsMsg_GetSubject(m);
  uint64_t token = 0;
  if (subject.size() > inbox_prefix_.size()) {
    const auto rest = subject.substr(inbox_prefix_.size());
    std::from_chars(rest.data(), rest.data() + rest.size(), token);
  }
  ReplyFn fn = requests_.take(token);
  if (!fn) {  // late, duplicate or cancelled
    natsMsg_Destroy(m);
    return;
  }
  if (natsMsg_IsNoResponders(m)) {
    natsMsg_Destroy(m);
    fn(Code::no_responders, nullptr);
    return;
  }
  const BusMessagePtr reply = to_bus_message(m);
  natsMsg_Destroy(m);
  fn(Code::ok, reply);
}

}  // namespace busgate::gw
