// busgate-bench: load generator for a busgate gateway (busgate://HOST:PORT, raw frames over TCP) and,
// for comparison, a NATS server directly (nats://HOST:PORT through cnats, natsraw://HOST:PORT through
// the raw client of raw_nats.hpp). Each run prints one JSON
// object per line. bench/run.py runs both sides in one go and computes the ratios.
//
//   busgate-bench --target URL --workload NAME [--size B] [--count N] [--subs N] [--seconds S] ...
//   workloads: pub, pubsub, fanout, reqrep, openloop, idle, isolation, stored, consume, cross, scale
//   (stored and consume, the durable work queues, are in durable_bench.cpp; cross, the cross-tenant
//   isolation, in cross_bench.cpp)
#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "bench.hpp"
#include "histogram.hpp"

using namespace busgate;
using namespace busgate::bench;

namespace {

// Publishes `count` messages in batches (many frames per send, like a real client's writer).
void bg_publish(BgConn& c, const std::string& subject, size_t size, uint64_t count) {
  const std::string payload(size, 'x');
  std::string batch;
  uint64_t sent = 0;
  while (sent < count) {
    batch.clear();
    for (int i = 0; i < 256 && sent < count; ++i, ++sent) append_pub(batch, subject, payload);
    c.send_all(batch);
  }
}

// ------------------------------------------------------------------ workloads

// 1 publisher → `subs` subscribers; returns delivered msgs/s (all subscribers together).
double run_delivery(const Options& o, int subs, uint64_t count, bool stalled_extra, uint64_t* lost_out) {
  const bool nats = o.target.starts_with("nats://");
  std::vector<Counter> counters(static_cast<size_t>(subs));
  const uint64_t want = count * static_cast<uint64_t>(subs);
  int64_t start = 0;
  if (nats) {
    std::vector<natsConnection*> ncs;
    std::vector<natsSubscription*> ss;
    for (int i = 0; i < subs; ++i) {
      ncs.push_back(nats_connect(o.target, false));
      natsSubscription* s = nullptr;
      natsConnection_Subscribe(
          &s, ncs.back(), o.subject.c_str(),
          [](natsConnection*, natsSubscription*, natsMsg* m, void* c) {
            auto* ctr = static_cast<Counter*>(c);
            ctr->n.fetch_add(1, std::memory_order_relaxed);
            ctr->last_ns.store(now_ns(), std::memory_order_relaxed);
            natsMsg_Destroy(m);
          },
          &counters[static_cast<size_t>(i)]);
      natsSubscription_SetPendingLimits(s, -1, -1);
      ss.push_back(s);
      natsConnection_Flush(ncs.back());
    }
    natsConnection* stalled = nullptr;
    natsSubscription* stalled_sub = nullptr;
    if (stalled_extra) {  // a subscriber whose handler never returns in time
      stalled = nats_connect(o.target, false);
      natsConnection_Subscribe(
          &stalled_sub, stalled, o.subject.c_str(),
          [](natsConnection*, natsSubscription*, natsMsg* m, void*) {
            natsMsg_Destroy(m);
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
          },
          nullptr);
      natsConnection_Flush(stalled);
    }
    natsConnection* pub = nats_connect(o.target, false);
    const std::string payload(o.size, 'x');
    start = now_ns();
    for (uint64_t i = 0; i < count; ++i)
      natsConnection_Publish(pub, o.subject.c_str(), payload.data(), static_cast<int>(payload.size()));
    natsConnection_Flush(pub);
    wait_delivered(counters, want);
    for (auto* s : ss) natsSubscription_Destroy(s);
    for (auto* nc : ncs) natsConnection_Destroy(nc);
    if (stalled_sub) natsSubscription_Destroy(stalled_sub);
    if (stalled) natsConnection_Destroy(stalled);
    natsConnection_Destroy(pub);
  } else {
    std::vector<std::unique_ptr<BgConn>> conns;
    for (int i = 0; i < subs; ++i) {
      conns.push_back(bg_connect(o.target, o.token));
      conns.back()->sub(1, o.subject);
    }
    // The publisher connects before the stalled subscriber, so that with and without it the healthy
    // subscribers and the publisher land on the same gateway threads (connections are spread
    // round-robin): the two runs differ only by the stalled subscriber.
    auto pub = bg_connect(o.target, o.token);
    std::unique_ptr<BgConn> stalled;
    if (stalled_extra) {
      stalled = bg_connect(o.target, o.token, 4096);
      stalled->sub(1, o.subject);  // and never reads again
    }
    std::vector<std::thread> readers;
    for (int i = 0; i < subs; ++i)
      readers.emplace_back([&, i] {
        proto::Frame f;
        auto& c = counters[static_cast<size_t>(i)];
        while (c.n.load(std::memory_order_relaxed) < count && conns[static_cast<size_t>(i)]->next(f)) {
          if (std::holds_alternative<proto::Msg>(f)) {
            c.n.fetch_add(1, std::memory_order_relaxed);
            c.last_ns.store(now_ns(), std::memory_order_relaxed);
          }
        }
      });
    start = now_ns();
    bg_publish(*pub, o.subject, o.size, count);
    pub->flush();
    wait_delivered(counters, want);
    for (auto& c : conns) shutdown(c->fd(), SHUT_RDWR);
    for (auto& t : readers) t.join();
  }
  return delivered_rate(counters, start, want, lost_out);
}

void workload_pub(const Options& o) {
  const bool nats = o.target.starts_with("nats://");
  const auto t0 = Clock::now();
  if (nats) {
    natsConnection* nc = nats_connect(o.target, false);
    const std::string payload(o.size, 'x');
    for (uint64_t i = 0; i < o.count; ++i)
      natsConnection_Publish(nc, o.subject.c_str(), payload.data(), static_cast<int>(payload.size()));
    natsConnection_Flush(nc);
    natsConnection_Destroy(nc);
  } else {
    auto c = bg_connect(o.target, o.token);
    bg_publish(*c, o.subject, o.size, o.count);
    c->flush();
  }
  const double rate = static_cast<double>(o.count) / secs(Clock::now() - t0);
  emit(o, "\"msgs_per_sec\":" + std::to_string(rate));
}

void workload_delivery(const Options& o, int subs) {
  uint64_t lost = 0;
  const double rate = run_delivery(o, subs, o.count, false, &lost);
  emit(o, "\"subs\":" + std::to_string(subs) + ",\"delivered_per_sec\":" + std::to_string(rate) +
              ",\"lost\":" + std::to_string(lost));
}

void workload_isolation(const Options& o) {
  uint64_t lost_a = 0, lost_b = 0;
  const double without = run_delivery(o, 1, o.count, false, &lost_a);
  const double with = run_delivery(o, 1, o.count, true, &lost_b);
  emit(o, "\"healthy_without_stalled\":" + std::to_string(without) + ",\"healthy_with_stalled\":" +
              std::to_string(with) + ",\"isolation\":" + std::to_string(with / without) +
              ",\"lost\":" + std::to_string(lost_a + lost_b));
}

// A responder that answers every request with its payload.
struct Responder {
  std::thread th;
  std::atomic<bool> stop{false};
  natsConnection* nc = nullptr;
  natsSubscription* sub = nullptr;
  std::unique_ptr<BgConn> bg;
  std::unique_ptr<RawResponder> raw;

  explicit Responder(const Options& o) {
    const std::string where = o.responder.empty() ? o.target : o.responder;
    if (where.starts_with("natsraw://")) {
      raw = std::make_unique<RawResponder>(where, o.target.starts_with("busgate://") ? "t.demo.bench.svc" : "bench.svc");
    } else if (where.starts_with("nats://")) {
      nc = nats_connect(where, true);
      // a NATS-side service: for a busgate target it answers on the tenant's bus subject
      const std::string subject = o.target.starts_with("nats://") ? "bench.svc" : "t.demo.bench.svc";
      natsConnection_Subscribe(
          &sub, nc, subject.c_str(),
          [](natsConnection* c, natsSubscription*, natsMsg* m, void*) {
            natsConnection_Publish(c, natsMsg_GetReply(m), natsMsg_GetData(m), natsMsg_GetDataLength(m));
            natsMsg_Destroy(m);
          },
          nullptr);
      natsConnection_Flush(nc);
    } else {
      bg = bg_connect(where, o.token);
      bg->sub(1, "bench.svc");
      th = std::thread([this] {
        proto::Frame f;
        std::string out;
        while (bg->next(f)) {
          if (const auto* m = std::get_if<proto::Msg>(&f); m && m->reply_to) {
            out.clear();
            proto::Pub p;
            p.subject = *m->reply_to;
            p.payload = m->payload;
            proto::encode_framed(p, out);
            bg->send_all(out);
          }
        }
      });
    }
  }
  ~Responder() {
    if (sub) natsSubscription_Destroy(sub);
    if (nc) natsConnection_Destroy(nc);
    if (bg) {
      shutdown(bg->fd(), SHUT_RDWR);
      th.join();
    }
  }
};

void workload_reqrep(const Options& o) {
  Responder responder(o);
  Histogram h;
  const std::string payload(o.size, 'x');
  const auto t0 = Clock::now();
  const auto end = t0 + std::chrono::duration<double>(o.seconds);
  if (o.target.starts_with("nats://")) {
    natsConnection* nc = nats_connect(o.target, true);
    while (Clock::now() < end) {
      natsMsg* reply = nullptr;
      const auto s = Clock::now();
      if (natsConnection_Request(&reply, nc, "bench.svc", payload.data(), static_cast<int>(payload.size()), 2000) ==
          NATS_OK) {
        h.record(secs(Clock::now() - s) * 1e6);
        natsMsg_Destroy(reply);
      }
    }
    natsConnection_Destroy(nc);
  } else {
    auto conn = bg_connect(o.target, o.token);
    BgConn& c = *conn;
    std::string out;
    uint32_t id = 0;
    proto::Frame f;
    while (Clock::now() < end) {
      out.clear();
      proto::encode_framed(proto::Req{++id, "bench.svc", payload, {}, 2000}, out);
      const auto s = Clock::now();
      c.send_all(out);
      while (c.next(f))
        if (std::holds_alternative<proto::Res>(f)) break;
      if (std::get<proto::Res>(f).status == 0) h.record(secs(Clock::now() - s) * 1e6);
    }
  }
  emit(o, latency_fields(h, secs(Clock::now() - t0)));
}

// Fixed-rate requests; latency is measured from each request's scheduled time, so a stall delays
// the measurement of every request scheduled behind it (no coordinated omission).
void workload_openloop(const Options& o) {
  Responder responder(o);
  const std::string payload(o.size, 'x');
  const std::vector<Clock::time_point> scheduled = open_loop_schedule(o);
  const uint64_t total = scheduled.size();
  Histogram h;
  std::mutex hm;
  std::atomic<uint64_t> done{0};
  if (o.target.starts_with("nats://")) {
    natsConnection* nc = nats_connect(o.target, true);
    struct Ctx {
      const std::vector<Clock::time_point>* sched;
      Histogram* h;
      std::mutex* m;
      std::atomic<uint64_t>* done;
    } ctx{&scheduled, &h, &hm, &done};
    natsSubscription* inbox = nullptr;
    natsConnection_Subscribe(
        &inbox, nc, "_BENCH.>",
        [](natsConnection*, natsSubscription*, natsMsg* m, void* c) {
          auto* x = static_cast<Ctx*>(c);
          const uint64_t i = std::stoull(natsMsg_GetSubject(m) + 7);
          const auto lat = secs(Clock::now() - (*x->sched)[i]) * 1e6;
          {
            std::lock_guard lk(*x->m);
            x->h->record(lat);
          }
          x->done->fetch_add(1);
          natsMsg_Destroy(m);
        },
        &ctx);
    natsSubscription_SetPendingLimits(inbox, -1, -1);
    natsConnection_Flush(nc);
    for (uint64_t i = 0; i < total; ++i) {
      std::this_thread::sleep_until(scheduled[i]);
      const std::string reply = "_BENCH." + std::to_string(i);
      natsConnection_PublishRequest(nc, "bench.svc", reply.c_str(), payload.data(), static_cast<int>(payload.size()));
    }
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    while (done.load() < total && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    natsSubscription_Destroy(inbox);
    natsConnection_Destroy(nc);
  } else {
    auto conn = bg_connect(o.target, o.token);
    BgConn& c = *conn;
    std::thread rx([&] {
      proto::Frame f;
      while (done.load() < total && c.next(f)) {
        if (const auto* r = std::get_if<proto::Res>(&f)) {
          const auto lat = secs(Clock::now() - scheduled[r->req_id - 1]) * 1e6;
          if (r->status == 0) {
            std::lock_guard lk(hm);
            h.record(lat);
          }
          done.fetch_add(1);
        }
      }
    });
    std::string out;
    for (uint64_t i = 0; i < total; ++i) {
      std::this_thread::sleep_until(scheduled[i]);
      out.clear();
      proto::encode_framed(proto::Req{static_cast<uint32_t>(i + 1), "bench.svc", payload, {}, 5000}, out);
      c.send_all(out);
    }
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    while (done.load() < total && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    shutdown(c.fd(), SHUT_RDWR);
    rx.join();
  }
  emit(o, "\"rate\":" + std::to_string(o.rate) + "," + latency_fields(h, o.seconds));
}

void workload_idle(const Options& o) {
  if (!o.server_pid) throw std::runtime_error("idle needs --server-pid");
  std::string host;
  int port = 0;
  parse_hostport(o.target, host, port);
  const bool nats = o.target.starts_with("nats://");
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const long before = rss_kib(o.server_pid);
  std::vector<int> fds;
  std::vector<std::unique_ptr<BgConn>> bgs;
  for (int i = 0; i < o.conns; ++i) {
    if (nats) {
      // a minimal NATS client: CONNECT + PING, wait for PONG
      int fd = socket(AF_INET, SOCK_STREAM, 0);
      const sockaddr_in a = ipv4_address(host, port);
      if (connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0) throw std::runtime_error("connect");
      const std::string hello = "CONNECT {\"verbose\":false}\r\nPING\r\n";
      ::send(fd, hello.data(), hello.size(), 0);
      std::string got;
      char buf[4096];
      while (got.find("PONG") == std::string::npos) {
        const ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n <= 0) throw std::runtime_error("nats closed");
        got.append(buf, static_cast<size_t>(n));
      }
      fds.push_back(fd);
    } else {
      bgs.push_back(std::make_unique<BgConn>(host, port, o.token));
    }
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const long after = rss_kib(o.server_pid);
  emit(o, "\"connections\":" + std::to_string(o.conns) + ",\"rss_before_kib\":" + std::to_string(before) +
              ",\"rss_after_kib\":" + std::to_string(after) + ",\"kib_per_conn\":" +
              std::to_string(static_cast<double>(after - before) / o.conns));
  for (int fd : fds) close(fd);
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error(a + " needs a value");
      return argv[++i];
    };
    if (a == "--target") o.target = val();
    else if (a == "--workload") o.workload = val();
    else if (a == "--size") o.size = std::stoul(val());
    else if (a == "--count") o.count = std::stoull(val());
    else if (a == "--subs") o.subs = std::stoi(val());
    else if (a == "--seconds") o.seconds = std::stod(val());
    else if (a == "--rate") o.rate = std::stod(val());
    else if (a == "--conns") o.conns = std::stoi(val());
    else if (a == "--threads") o.threads = std::stoi(val());
    else if (a == "--server-pid") o.server_pid = std::stoi(val());
    else if (a == "--token") o.token = val();
    else if (a == "--responder") o.responder = val();
    else if (a == "--window") o.window = static_cast<uint32_t>(std::stoul(val()));
    else if (a == "--prefill") o.prefill = std::stoll(val());
    else if (a == "--stream") o.stream = val();
    else if (a == "--durable") o.durable = val();
    else if (a == "--direct-mode") o.direct_mode = val();
    else if (a == "--token-b") o.token_b = val();
    else if (a == "--b-read-rate") o.b_read_rate = std::stod(val());
    else if (a == "--metrics") o.metrics = val();
    else if (a == "--b-rcvbuf") o.b_rcvbuf = std::stoul(val());
    else if (a == "--b-modes") o.b_modes = val();
    else if (a == "--b-mss") o.b_mss = std::stoi(val());
    else if (a == "--drain") o.drain = std::stod(val());
    else if (a == "--b-same-thread") o.b_same_thread = true;
    else if (a == "--subject") {
      o.subject = val();
      o.subject_given = true;
    }
    else if (a == "--help") {
      std::puts("busgate-bench --target busgate://H:P|nats://H:P (cnats)|natsraw://H:P (raw NATS protocol)\n"
                "  --workload pub|pubsub|fanout|reqrep|openloop|idle|isolation|stored|consume|cross|scale\n"
                "  [--size B] [--count N] [--subs N] [--seconds S] [--rate R] [--conns N] [--server-pid PID] [--token T]\n"
                "  [--threads N]  (scale: handshaking threads)\n"
                "  [--responder nats://H:P|natsraw://H:P|busgate://H:P]  (reqrep/openloop: where the responder runs)\n"
                "  [--subject S] [--window W] [--prefill N] [--stream NAME] [--durable NAME]\n"
                "  [--direct-mode async|inbox]  (stored/consume)\n"
                "  [--token-b T] [--metrics http://H:P] [--drain S] [--b-modes stalled,slow,healthy] [--b-read-rate MSGS]\n"
                "  [--b-rcvbuf B] [--b-mss B] [--b-same-thread]  (cross; --seconds is the window)");
      return 0;
    } else {
      std::fprintf(stderr, "unknown option %s\n", a.c_str());
      return 2;
    }
  }
  if (o.target.empty()) {
    std::fprintf(stderr, "--target is required\n");
    return 2;
  }
  try {
    if (o.target.starts_with("natsraw://")) {
      if (!raw_workload(o)) throw std::runtime_error("workload " + o.workload + " has no natsraw:// version");
    } else if (o.workload == "pub") workload_pub(o);
    else if (o.workload == "pubsub") workload_delivery(o, 1);
    else if (o.workload == "fanout") workload_delivery(o, o.subs);
    else if (o.workload == "reqrep") workload_reqrep(o);
    else if (o.workload == "openloop") workload_openloop(o);
    else if (o.workload == "idle") workload_idle(o);
    else if (o.workload == "isolation") workload_isolation(o);
    else if (o.workload == "stored") workload_stored(o);
    else if (o.workload == "consume") workload_consume(o);
    else if (o.workload == "cross") workload_cross(o);
    else if (o.workload == "scale") workload_scale(o);
    else throw std::runtime_error("unknown workload " + o.workload);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "busgate-bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
