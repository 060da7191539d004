// busgate-bench, durable work queues (docs/protocol.md section 16) against JetStream used directly:
//
//   stored   publish --count messages into a stream with acknowledgement, at most --window
//            unacknowledged at a time; msgs/s from the first send to the last acknowledgement.
//            busgate: PUB [3, subject, payload, nil, nil, ack_id], each answered OK [9, 3, ack_id]
//            once stored, the PUBs of one window refill written together. Direct (--direct-mode
//            inbox, the default): cnats publishes with a reply subject on one wildcard inbox
//            subscription, counting the PubAcks, the window kept by hand (what the gateway does on
//            its own NATS link); --direct-mode async: js_PublishAsync with PublishAsync.MaxPending =
//            --window, then js_PublishAsyncComplete (the library's own way; a few % slower here).
//   consume  store --prefill messages (not timed), then receive and acknowledge --count messages with
//            at most --window unacknowledged; msgs/s from the first delivery to the last
//            acknowledgement being received by the server (a PING/PONG or a cnats flush after it).
//            busgate: a durable SUB with max_inflight = --window, one ACK per MSG, the ACKs for all
//            MSGs of one read written together. Direct: a JetStream pull consumer (js_PullSubscribe,
//            MaxAckPending = --window), natsSubscription_Fetch batches of --window, natsMsg_Ack
//            (asynchronous, like the busgate ACK) on every message before the next fetch.
//
// On a busgate target the stream and consumer are the gateway's (its configuration); on a nats://
// target the workloads create the stream --stream (file storage, workqueue retention, one replica,
// a two-minute duplicate window) on the first token of --subject, and the durable --durable on it.
#include <sys/time.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "bench.hpp"

namespace busgate::bench {
namespace {

std::string default_subject(const Options& o) {
  if (o.subject_given) return o.subject;
  return o.target.starts_with("nats://") ? "djobs.bench" : "jobs.bench";
}

void emit_rate(const Options& o, uint64_t n, int64_t start, int64_t end, uint64_t errors, uint64_t redelivered,
               const std::string& extra = "") {
  const double elapsed = static_cast<double>(end - start) / 1e9;
  char buf[256];
  std::snprintf(buf, sizeof buf, "\"count\":%llu,\"window\":%u,\"seconds\":%.4f,\"msgs_per_sec\":%.1f,\"errors\":%llu,\"redelivered\":%llu",
                static_cast<unsigned long long>(n), o.window, elapsed, elapsed > 0 ? static_cast<double>(n) / elapsed : 0.0,
                static_cast<unsigned long long>(errors), static_cast<unsigned long long>(redelivered));
  emit(o, buf + extra);
}

// A read that waits longer than this means the run is stuck (nothing stored, nothing delivered).
void set_read_timeout(int fd, int seconds) {
  timeval tv{seconds, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

// ------------------------------------------------------------------ busgate side

// Publishes n messages with ack ids, keeping at most `window` unanswered; returns the ERR count.
uint64_t bg_stored(BgConn& c, const std::string& subject, size_t size, uint64_t n, uint32_t window,
                   std::string* first_error) {
  const std::string payload(size, 'x');
  std::string out;
  uint64_t sent = 0, done = 0, errors = 0;
  proto::Frame f;
  while (done < n) {
    out.clear();
    while (sent < n && sent - done < window) {
      const size_t s = proto::begin_frame(out);
      proto::mp::Writer w(out);
      w.array_header(6);
      w.uint(3);
      w.str(subject);
      w.bin(payload);
      w.nil();
      w.nil();
      w.uint(sent % 0xffffffffu + 1);  // ack id: any non-zero id
      proto::finish_frame(out, s);
      ++sent;
    }
    if (!out.empty()) c.send_all(out);
    if (!c.next(f)) throw std::runtime_error("gateway closed the connection (" + std::to_string(done) + " stored)");
    do {
      if (const auto* ok = std::get_if<proto::Ok>(&f); ok && ok->ref_op == 3) {
        ++done;
      } else if (const auto* e = std::get_if<proto::Err>(&f)) {
        if (e->ref_op != 3) throw std::runtime_error("ERR " + std::to_string(e->code) + " " + std::string(e->message));
        if (!errors++ && first_error) *first_error = std::to_string(e->code) + " " + std::string(e->message);
        ++done;
      }
    } while (c.buffered(f));
  }
  return errors;
}

void bg_workload_stored(const Options& o) {
  const std::string subject = default_subject(o);
  auto c = bg_connect(o.target, o.token);
  set_read_timeout(c->fd(), 30);
  std::string first_error;
  const int64_t start = now_ns();
  const uint64_t errors = bg_stored(*c, subject, o.size, o.count, o.window, &first_error);
  const int64_t end = now_ns();
  if (errors) std::fprintf(stderr, "busgate-bench: %llu PUBs not stored, first: %s\n",
                           static_cast<unsigned long long>(errors), first_error.c_str());
  emit_rate(o, o.count, start, end, errors, 0);
}

void bg_workload_consume(const Options& o) {
  const std::string subject = default_subject(o);
  const uint64_t prefill = o.prefill < 0 ? o.count : static_cast<uint64_t>(o.prefill);
  if (prefill) {
    auto p = bg_connect(o.target, o.token);
    set_read_timeout(p->fd(), 30);
    std::string first_error;
    if (const uint64_t errors = bg_stored(*p, subject, o.size, prefill, o.window, &first_error))
      throw std::runtime_error("pre-fill: " + std::to_string(errors) + " PUBs not stored, first: " + first_error);
  }
  auto conn = bg_connect(o.target, o.token);
  BgConn& c = *conn;
  set_read_timeout(c.fd(), 30);
  constexpr uint32_t kSid = 1;
  std::string out;
  {
    const size_t s = proto::begin_frame(out);
    proto::mp::Writer w(out);
    w.array_header(5);
    w.uint(4);
    w.uint(kSid);
    w.str(subject);
    w.nil();
    w.map_header(2);
    w.str("durable");
    w.str(o.durable);
    w.str("max_inflight");
    w.uint(o.window);
    proto::finish_frame(out, s);
    c.send_all(out);
    out.clear();
  }
  uint64_t acked = 0, redelivered = 0;
  int64_t start = 0;
  proto::Frame f;
  while (acked < o.count) {
    if (!c.next(f))
      throw std::runtime_error("no delivery for 30 s or connection closed (" + std::to_string(acked) + " acknowledged)");
    do {  // everything this read brought; then one write of the ACKs
      if (const auto* m = std::get_if<proto::Msg>(&f)) {
        if (m->sid != kSid || acked == o.count) continue;  // beyond --count: left to be released
        if (!m->delivery_id) throw std::runtime_error("MSG without a delivery id on a durable subscription");
        if (!start) start = now_ns();
        if (m->attempt > 1) ++redelivered;
        const size_t s = proto::begin_frame(out);
        proto::mp::Writer w(out);
        w.array_header(3);
        w.uint(14);
        w.uint(kSid);
        w.uint(m->delivery_id);
        proto::finish_frame(out, s);
        ++acked;
      } else if (const auto* e = std::get_if<proto::Err>(&f)) {
        throw std::runtime_error("ERR " + std::to_string(e->code) + " " + std::string(e->message) + " (op " +
                                 std::to_string(e->ref_op) + ")");
      }
    } while (c.buffered(f));
    if (!out.empty()) {
      c.send_all(out);
      out.clear();
    }
  }
  c.flush();  // the gateway has read every ACK
  const int64_t end = now_ns();
  emit_rate(o, acked, start, end, 0, redelivered);
}

// ------------------------------------------------------------------ direct JetStream (cnats)

struct Js {
  natsConnection* nc = nullptr;
  jsCtx* js = nullptr;
  std::atomic<uint64_t> errors{0};
  ~Js() {
    if (js) jsCtx_Destroy(js);
    if (nc) natsConnection_Destroy(nc);
  }
};

void check(natsStatus s, jsErrCode jerr, const std::string& what) {
  if (s != NATS_OK)
    throw std::runtime_error(what + ": " + natsStatus_GetText(s) + " (JetStream error " + std::to_string(jerr) + ")");
}

// Connects and creates (or updates) the stream: file storage, workqueue, 1 replica, 2 min dedupe.
std::unique_ptr<Js> js_open(const Options& o, const std::string& subject) {
  auto j = std::make_unique<Js>();
  j->nc = nats_connect(o.target, false);
  jsOptions jo;
  jsOptions_Init(&jo);
  jo.PublishAsync.MaxPending = o.window;
  jo.PublishAsync.StallWait = 30000;
  jo.PublishAsync.ErrHandler = [](jsCtx*, jsPubAckErr*, void* c) { static_cast<Js*>(c)->errors.fetch_add(1); };
  jo.PublishAsync.ErrHandlerClosure = j.get();
  check(natsConnection_JetStream(&j->js, j->nc, &jo), static_cast<jsErrCode>(0), "JetStream context");
  const std::string pattern = subject.substr(0, subject.find('.')) + ".>";
  const char* subjects[] = {pattern.c_str()};
  jsStreamConfig sc;
  jsStreamConfig_Init(&sc);
  sc.Name = o.stream.c_str();
  sc.Subjects = subjects;
  sc.SubjectsLen = 1;
  sc.Retention = js_WorkQueuePolicy;
  sc.Storage = js_FileStorage;
  sc.Replicas = 1;
  sc.Duplicates = 120LL * 1000 * 1000 * 1000;
  jsStreamInfo* si = nullptr;
  jsErrCode jerr = static_cast<jsErrCode>(0);
  natsStatus s = js_AddStream(&si, j->js, &sc, nullptr, &jerr);
  if (s != NATS_OK && jerr == JSStreamNameExistErr) s = js_UpdateStream(&si, j->js, &sc, nullptr, &jerr);
  check(s, jerr, "creating stream " + o.stream);
  jsStreamInfo_Destroy(si);
  return j;
}

void js_stored(Js& j, const std::string& subject, size_t size, uint64_t n) {
  const std::string payload(size, 'x');
  for (uint64_t i = 0; i < n; ++i) {
    natsStatus s;
    while ((s = js_PublishAsync(j.js, subject.c_str(), payload.data(), static_cast<int>(payload.size()), nullptr)) ==
           NATS_TIMEOUT) {
    }  // stalled at MaxPending for StallWait: keep waiting
    check(s, static_cast<jsErrCode>(0), "js_PublishAsync");
  }
  jsPubOptions po;
  jsPubOptions_Init(&po);
  po.MaxWait = 60000;
  check(js_PublishAsyncComplete(j.js, &po), static_cast<jsErrCode>(0), "js_PublishAsyncComplete");
}

// The same, without the async-publish machinery: a publish with a reply subject per message on one
// wildcard inbox subscription, counting PubAcks, keeping the window by hand.
uint64_t js_stored_inbox(Js& j, const std::string& subject, size_t size, uint64_t n, uint32_t window) {
  struct State {
    std::mutex m;
    std::condition_variable cv;
    uint64_t acked = 0, errors = 0;
  } st;
  char inbox[64];
  std::snprintf(inbox, sizeof inbox, "_BENCHACK.%d", static_cast<int>(getpid()));
  natsSubscription* sub = nullptr;
  check(natsConnection_Subscribe(
            &sub, j.nc, (std::string(inbox) + ".*").c_str(),
            [](natsConnection*, natsSubscription*, natsMsg* m, void* c) {
              auto* x = static_cast<State*>(c);
              const bool err = natsMsg_GetDataLength(m) > 0 && std::string_view(natsMsg_GetData(m), static_cast<size_t>(natsMsg_GetDataLength(m)))
                                                                    .find("\"error\"") != std::string_view::npos;
              natsMsg_Destroy(m);
              std::lock_guard lk(x->m);
              ++x->acked;
              if (err) ++x->errors;
              x->cv.notify_one();
            },
            &st),
        static_cast<jsErrCode>(0), "inbox subscription");
  natsSubscription_SetPendingLimits(sub, -1, -1);
  natsConnection_Flush(j.nc);
  const std::string payload(size, 'x');
  std::string reply;
  for (uint64_t i = 0; i < n; ++i) {
    {
      std::unique_lock lk(st.m);
      if (!st.cv.wait_for(lk, std::chrono::seconds(30), [&] { return i - st.acked < window; }))
        throw std::runtime_error("no PubAck for 30 s");
    }
    reply = std::string(inbox) + "." + std::to_string(i);
    natsConnection_PublishRequest(j.nc, subject.c_str(), reply.c_str(), payload.data(), static_cast<int>(payload.size()));
  }
  natsConnection_Flush(j.nc);
  std::unique_lock lk(st.m);
  if (!st.cv.wait_for(lk, std::chrono::seconds(30), [&] { return st.acked >= n; }))
    throw std::runtime_error("PubAcks missing");
  lk.unlock();
  natsSubscription_Destroy(sub);
  return st.errors;
}

void js_workload_stored(const Options& o, bool inbox) {
  const std::string subject = default_subject(o);
  auto j = js_open(o, subject);
  const int64_t start = now_ns();
  uint64_t errors = 0;
  if (inbox) errors = js_stored_inbox(*j, subject, o.size, o.count, o.window);
  else js_stored(*j, subject, o.size, o.count);
  const int64_t end = now_ns();
  emit_rate(o, o.count, start, end, errors + j->errors.load(), 0,
            std::string(",\"direct_mode\":\"") + (inbox ? "inbox" : "async") + "\"");
}

void js_workload_consume(const Options& o) {
  const std::string subject = default_subject(o);
  const uint64_t prefill = o.prefill < 0 ? o.count : static_cast<uint64_t>(o.prefill);
  auto j = js_open(o, subject);
  if (prefill) {
    js_stored(*j, subject, o.size, prefill);
    if (j->errors.load()) throw std::runtime_error("pre-fill: messages not stored");
  }
  jsSubOptions so;
  jsSubOptions_Init(&so);
  so.Stream = o.stream.c_str();
  so.Config.Durable = o.durable.c_str();
  so.Config.AckPolicy = js_AckExplicit;
  so.Config.AckWait = 30LL * 1000 * 1000 * 1000;
  so.Config.MaxAckPending = o.window;
  so.Config.FilterSubject = subject.c_str();
  natsSubscription* sub = nullptr;
  jsErrCode jerr = static_cast<jsErrCode>(0);
  natsStatus s = js_PullSubscribe(&sub, j->js, subject.c_str(), o.durable.c_str(), nullptr, &so, &jerr);
  if (s != NATS_OK) {  // a consumer of that name left with other settings (another --window): replace it
    js_DeleteConsumer(j->js, o.stream.c_str(), o.durable.c_str(), nullptr, nullptr);
    s = js_PullSubscribe(&sub, j->js, subject.c_str(), o.durable.c_str(), nullptr, &so, &jerr);
  }
  check(s, jerr, "js_PullSubscribe");
  uint64_t acked = 0, fetches = 0;
  int64_t start = 0;
  auto last_progress = Clock::now();
  while (acked < o.count) {
    natsMsgList list{};
    const int want = static_cast<int>(std::min<uint64_t>(o.window, o.count - acked));
    s = natsSubscription_Fetch(&list, sub, want, 5000, &jerr);
    ++fetches;
    if (s == NATS_TIMEOUT) {
      if (Clock::now() - last_progress > std::chrono::seconds(30))
        throw std::runtime_error("no delivery for 30 s (" + std::to_string(acked) + " acknowledged)");
      continue;
    }
    check(s, jerr, "natsSubscription_Fetch");
    last_progress = Clock::now();
    for (int i = 0; i < list.Count; ++i) {
      if (!start) start = now_ns();
      check(natsMsg_Ack(list.Msgs[i], nullptr), static_cast<jsErrCode>(0), "natsMsg_Ack");
      ++acked;
    }
    natsMsgList_Destroy(&list);
  }
  natsConnection_Flush(j->nc);  // nats-server has read every ack
  const int64_t end = now_ns();
  natsSubscription_Destroy(sub);
  emit_rate(o, acked, start, end, 0, 0, ",\"fetches\":" + std::to_string(fetches));
}

}  // namespace

void workload_stored(const Options& o) {
  if (o.target.starts_with("nats://")) js_workload_stored(o, o.direct_mode == "inbox");
  else bg_workload_stored(o);
}

void workload_consume(const Options& o) {
  if (o.target.starts_with("nats://")) js_workload_consume(o);
  else bg_workload_consume(o);
}

}  // namespace busgate::bench
