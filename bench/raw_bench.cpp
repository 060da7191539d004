// busgate-bench workloads against nats-server through RawNats (target natsraw://HOST:PORT): the
// direct baseline built the same way as the busgate side of busgate_bench.cpp.
#include <atomic>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "bench.hpp"
#include "histogram.hpp"
#include "raw_nats.hpp"

namespace busgate::bench {

namespace {

std::unique_ptr<RawNats> raw_connect(const std::string& url) {
  std::string host;
  int port = 0;
  parse_hostport(url, host, port);
  return std::make_unique<RawNats>(host, port);
}

void raw_publish(RawNats& c, std::string_view subject, size_t size, uint64_t count) {
  const std::string payload(size, 'x');
  std::string batch;
  uint64_t sent = 0;
  while (sent < count) {
    batch.clear();
    for (int i = 0; i < 256 && sent < count; ++i, ++sent) append_nats_pub(batch, subject, {}, payload);
    c.send_all(batch);
  }
}

void raw_pub(const Options& o) {
  auto c = raw_connect(o.target);
  const auto t0 = Clock::now();
  raw_publish(*c, o.subject, o.size, o.count);
  c->flush();
  emit(o, "\"msgs_per_sec\":" + std::to_string(static_cast<double>(o.count) / secs(Clock::now() - t0)));
}

void raw_delivery(const Options& o, int subs) {
  std::vector<Counter> counters(static_cast<size_t>(subs));
  std::vector<std::unique_ptr<RawNats>> conns;
  for (int i = 0; i < subs; ++i) {
    conns.push_back(raw_connect(o.target));
    conns.back()->sub(o.subject, 1);
    conns.back()->flush();
  }
  auto pub = raw_connect(o.target);
  const uint64_t count = o.count;
  std::vector<std::thread> readers;
  for (int i = 0; i < subs; ++i)
    readers.emplace_back([&, i] {
      RawMsg m;
      auto& c = counters[static_cast<size_t>(i)];
      while (c.n.load(std::memory_order_relaxed) < count && conns[static_cast<size_t>(i)]->next(m)) {
        c.n.fetch_add(1, std::memory_order_relaxed);
        c.last_ns.store(now_ns(), std::memory_order_relaxed);
      }
    });
  const int64_t start = now_ns();
  raw_publish(*pub, o.subject, o.size, count);
  pub->flush();
  const uint64_t want = count * static_cast<uint64_t>(subs);
  wait_delivered(counters, want);
  for (auto& c : conns) shutdown(c->fd(), SHUT_RDWR);
  for (auto& t : readers) t.join();
  uint64_t lost = 0;
  const double rate = delivered_rate(counters, start, want, &lost);
  emit(o, "\"subs\":" + std::to_string(subs) + ",\"delivered_per_sec\":" + std::to_string(rate) +
              ",\"lost\":" + std::to_string(lost));
}

// Closed loop, one request at a time, RawNats on both ends.
void raw_reqrep(const Options& o) {
  RawResponder responder(o.responder.empty() ? o.target : o.responder, "bench.svc");
  auto c = raw_connect(o.target);
  c->sub("_RB.*", 1);
  c->flush();
  Histogram h;
  const std::string payload(o.size, 'x');
  std::string out;
  RawMsg m;
  const auto t0 = Clock::now();
  const auto end = t0 + std::chrono::duration<double>(o.seconds);
  for (uint64_t i = 0; Clock::now() < end; ++i) {
    out.clear();
    const std::string reply = "_RB." + std::to_string(i);
    append_nats_pub(out, "bench.svc", reply, payload);
    const auto s = Clock::now();
    c->send_all(out);
    while (c->next(m))
      if (m.subject == reply) break;
    h.record(secs(Clock::now() - s) * 1e6);
  }
  emit(o, latency_fields(h, secs(Clock::now() - t0)));
}

// Fixed rate; latency from each request's scheduled time (as workload_openloop).
void raw_openloop(const Options& o) {
  RawResponder responder(o.responder.empty() ? o.target : o.responder, "bench.svc");
  const std::string payload(o.size, 'x');
  const std::vector<Clock::time_point> scheduled = open_loop_schedule(o);
  const uint64_t total = scheduled.size();
  auto c = raw_connect(o.target);
  c->sub("_RB.*", 1);
  c->flush();
  Histogram h;
  std::atomic<uint64_t> done{0};
  std::thread rx([&] {
    RawMsg m;
    while (done.load() < total && c->next(m)) {
      uint64_t i = 0;
      std::from_chars(m.subject.data() + 4, m.subject.data() + m.subject.size(), i);
      if (i < total) h.record(secs(Clock::now() - scheduled[i]) * 1e6);
      done.fetch_add(1);
    }
  });
  std::string out;
  for (uint64_t i = 0; i < total; ++i) {
    std::this_thread::sleep_until(scheduled[i]);
    out.clear();
    append_nats_pub(out, "bench.svc", "_RB." + std::to_string(i), payload);
    c->send_all(out);
  }
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (done.load() < total && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  shutdown(c->fd(), SHUT_RDWR);
  rx.join();
  emit(o, "\"rate\":" + std::to_string(o.rate) + "," + latency_fields(h, o.seconds));
}

}  // namespace

RawResponder::RawResponder(const std::string& url, const std::string& subject) : conn_(raw_connect(url)) {
  conn_->sub(subject, 1);
  conn_->flush();
  th_ = std::thread([this] {
    RawMsg m;
    std::string out;
    try {
      while (conn_->next(m)) {
        if (m.reply.empty()) continue;
        out.clear();
        append_nats_pub(out, m.reply, {}, m.payload);
        conn_->send_all(out);
      }
    } catch (const std::exception&) {  // the socket was shut down under a send
    }
  });
}

RawResponder::~RawResponder() {
  shutdown(conn_->fd(), SHUT_RDWR);
  th_.join();
}

bool raw_workload(const Options& o) {
  if (o.workload == "pub") raw_pub(o);
  else if (o.workload == "pubsub") raw_delivery(o, 1);
  else if (o.workload == "fanout") raw_delivery(o, o.subs);
  else if (o.workload == "reqrep") raw_reqrep(o);
  else if (o.workload == "openloop") raw_openloop(o);
  else return false;
  return true;
}

}  // namespace busgate::bench
