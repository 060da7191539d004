// The cross-tenant isolation workload (`cross`): what a misbehaving tenant B costs a healthy tenant A
// on one gateway. Tenant A runs one publisher and one subscriber (the `pubsub` shape). Tenant B runs
// a publisher at full speed to its own subscriber, which is either stalled (subscribes, then never
// reads) or slow (reads, at a fixed pace far below what its publisher sends). Both tenants use the
// same client subject; their namespaces keep the traffic apart on the bus.
//
// One run is a window on fresh connections with A alone, then one with each of B's behaviours
// (`--b-modes`): stalled, slow, and, for reference, healthy (B's subscriber reads as fast as it can:
// what B's traffic alone costs A on this machine). In each window A's publisher sends for `--seconds`;
// A's rate is what A's subscriber received within the window, divided by its length. The figures are
// A's rate with B ÷ A's rate alone.
//
// B's publisher publishes to its subscriber: it starts with A's and stops at the end of the window,
// or as soon as the gateway has cut B's subscriber off as a slow consumer (with `--metrics`, from the
// gateway's slow-consumer counter), since from then on it only measures how two publishers share
// the machine. The stalled subscriber has a 4 KiB receive buffer; the slow one reads `--b-read-rate`
// messages a second in reads of 16 KiB, and announces an Ethernet-sized TCP segment (`--b-mss`), so
// that each read opens its TCP receive window as it would on a network (with loopback's 64 KiB
// segments the gateway would see its progress only every few reads).
//
// Connection order: A's subscriber, A's publisher, then B's subscriber and B's publisher. The gateway
// spreads connections round-robin over its I/O threads, so with two threads A's pair is split over
// both threads in every window, and each of B's connections shares a thread with one of A's (B's
// publisher with A's publisher, B's subscriber with A's subscriber). `--b-same-thread` puts an idle
// connection of B's between the two, so that B's pair shares a thread instead.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "bench.hpp"

namespace busgate::bench {
namespace {

enum class BMode { none, stalled, slow, healthy };

const char* mode_name(BMode m) {
  switch (m) {
    case BMode::stalled: return "stalled";
    case BMode::slow: return "slow";
    case BMode::healthy: return "healthy";
    default: return "none";
  }
}

// `n` PUB frames of `size` bytes on `subject`, ready to send in one write.
std::string pub_batch(const std::string& subject, size_t size, int n) {
  const std::string payload(size, 'x');
  std::string batch;
  for (int i = 0; i < n; ++i) append_pub(batch, subject, payload);
  return batch;
}

constexpr int kBatch = 256;

struct Reader {
  std::atomic<uint64_t> n{0};          // messages received
  std::atomic<uint64_t> in_window{0};  // ... before the window closed
  std::atomic<int64_t> last_ns{0};
  std::atomic<bool> cut_off{false};    // ERR SLOW_CONSUMER or the connection closed
  int64_t max_gap_ns = 0;              // the longest time between two reads (a slow reader's)
};

struct Window {
  double rate = 0;  // A's messages received within the window, per second
  uint64_t published = 0, received = 0, lost = 0, late = 0;
  bool a_cut_off = false;
  uint64_t b_published = 0, b_received = 0;
  bool b_cut_off = false;
  double b_cut_off_ms = -1;  // when the gateway cut B's subscriber off, from the window's start
  double b_max_read_gap_ms = 0;
};

// A slow reader's reads: small enough that it shows progress every few milliseconds (at 20,000
// messages of 128 B a second, one read every 5 ms or so), as a consumer that keeps reading does.
constexpr size_t kSlowRead = 16384;

// Reads every frame of `c` into `r` until the connection ends; at most `pace` messages a second
// when `pace` > 0 (one read of up to kSlowRead bytes, then a sleep long enough to keep the average).
void read_loop(BgConn& c, Reader& r, int64_t window_end_ns, double pace, const std::atomic<bool>& done) {
  proto::Frame f;
  const auto t0 = Clock::now();
  int64_t last_read = now_ns();
  try {
    for (;;) {
      while (c.buffered(f)) {
        if (std::holds_alternative<proto::Msg>(f)) {
          const int64_t t = now_ns();
          r.n.fetch_add(1, std::memory_order_relaxed);
          if (t < window_end_ns) r.in_window.fetch_add(1, std::memory_order_relaxed);
          r.last_ns.store(t, std::memory_order_relaxed);
        } else if (const auto* e = std::get_if<proto::Err>(&f);
                   e && e->code == static_cast<uint64_t>(proto::Code::slow_consumer)) {
          r.cut_off = true;
        }
      }
      if (pace > 0) {
        const auto due = t0 + std::chrono::duration<double>(static_cast<double>(r.n.load()) / pace);
        std::this_thread::sleep_until(due);
      }
      const int64_t before = now_ns();
      if (before - last_read > r.max_gap_ns && r.n.load() > 0) r.max_gap_ns = before - last_read;
      if (!c.fill(pace > 0 ? kSlowRead : 1 << 16)) break;
      last_read = now_ns();
    }
  } catch (const std::exception&) {
  }
  if (!done.load()) r.cut_off = true;  // the gateway closed the connection
}

// One counter from the gateway's /metrics (`url`: http://HOST:PORT); -1 when it cannot be read.
int64_t metric(const std::string& url, const std::string& name) {
  std::string host;
  int port = 0;
  parse_hostport(url, host, port);
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  const timeval limit{0, 200000};  // an answer that takes longer is skipped (the next poll asks again)
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
  const sockaddr_in a = ipv4_address(host, port);
  std::string got;
  if (connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0) {
    const std::string req = "GET /metrics HTTP/1.0\r\nHost: " + host + "\r\n\r\n";
    if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(req.size())) {
      char buf[16384];
      for (ssize_t n; (n = recv(fd, buf, sizeof buf, 0)) > 0;) got.append(buf, static_cast<size_t>(n));
    }
  }
  close(fd);
  // The sum over every series of the counter (`name N` and `name{labels} N`), counting only whole
  // lines, so an answer cut short is not read as a smaller figure.
  int64_t sum = 0;
  bool found = false;
  for (size_t at = got.find("\n" + name); at != std::string::npos; at = got.find("\n" + name, at + 1)) {
    const size_t after = at + 1 + name.size();
    if (after >= got.size() || (got[after] != ' ' && got[after] != '{')) continue;  // a longer name
    const size_t eol = got.find('\n', after);
    if (eol == std::string::npos) return -1;
    const size_t sp = got.rfind(' ', eol);
    char* end = nullptr;
    const long long v = std::strtoll(got.c_str() + sp + 1, &end, 10);
    if (end != got.c_str() + eol) return -1;
    sum += v;
    found = true;
  }
  return found ? sum : -1;
}

constexpr const char* kCutOffs = "busgate_slow_consumer_disconnects_total";

Window run_window(const Options& o, BMode mode) {
  Window w;
  const std::string batch = pub_batch(o.subject, o.size, kBatch);
  auto a_sub = bg_connect(o.target, o.token);
  a_sub->sub(1, o.subject);
  auto a_pub = bg_connect(o.target, o.token);
  const timeval limit{10, 0};  // a publisher the gateway stops reading for this long fails the run
  setsockopt(a_pub->fd(), SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
  std::unique_ptr<BgConn> b_sub, b_pub, spacer;
  if (mode != BMode::none) {
    if (mode == BMode::stalled) b_sub = bg_connect(o.target, o.token_b, 4096);
    else if (mode == BMode::slow) b_sub = bg_connect(o.target, o.token_b, o.b_rcvbuf, o.b_mss);
    else b_sub = bg_connect(o.target, o.token_b);
    b_sub->sub(1, o.subject);
    // With two I/O threads, an idle connection in between puts B's publisher on its subscriber's thread.
    if (o.b_same_thread) spacer = bg_connect(o.target, o.token_b);
    b_pub = bg_connect(o.target, o.token_b);
  }
  Reader a, b;
  std::atomic<bool> go{false}, stop{false}, a_done{false}, b_done{false}, b_gone{false};
  std::atomic<uint64_t> b_sent{0};
  std::atomic<int64_t> b_gone_ns{0};
  const int64_t cut_offs_before = o.metrics.empty() ? -1 : metric(o.metrics, kCutOffs);
  const int64_t start_ns = now_ns() + 20'000'000;  // every thread is waiting by then
  const int64_t end_ns = start_ns + static_cast<int64_t>(o.seconds * 1e9);
  std::vector<std::thread> threads;
  threads.emplace_back([&] { read_loop(*a_sub, a, end_ns, 0, a_done); });
  if (mode == BMode::slow || mode == BMode::healthy)
    threads.emplace_back([&] { read_loop(*b_sub, b, INT64_MAX, mode == BMode::slow ? o.b_read_rate : 0, b_done); });
  if (b_pub)
    threads.emplace_back([&] {
      while (!go.load()) std::this_thread::yield();
      try {
        while (!stop.load(std::memory_order_relaxed) && !b_gone.load(std::memory_order_relaxed)) {
          b_pub->send_all(batch);
          b_sent.fetch_add(kBatch, std::memory_order_relaxed);
        }
      } catch (const std::exception&) {  // the shutdown() at the window's end ends a send the gateway is not reading
      }
    });
  if (cut_offs_before >= 0)  // in every window, so that A alone sees the same polling
    threads.emplace_back([&] {
      while (!stop.load() && !b_gone.load()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        if (metric(o.metrics, kCutOffs) > cut_offs_before) {
          b_gone_ns = now_ns();
          b_gone = true;
        }
      }
    });
  while (now_ns() < start_ns) std::this_thread::sleep_for(std::chrono::microseconds(200));
  go = true;
  while (now_ns() < end_ns) {
    a_pub->send_all(batch);
    w.published += kBatch;
  }
  stop = true;
  // B's part ends with the window: its connections close, so that nothing of B's holds up the rest of
  // A's messages (they only count whether A lost any).
  w.b_cut_off = mode != BMode::none && (b.cut_off.load() || b_gone.load());
  if (mode != BMode::none && b_gone.load()) w.b_cut_off_ms = static_cast<double>(b_gone_ns.load() - start_ns) / 1e6;
  w.b_received = b.n.load();
  b_done = true;
  for (auto* c : {b_sub.get(), b_pub.get()})
    if (c) shutdown(c->fd(), SHUT_RDWR);
  // Let A's subscriber catch up: until it has everything, was cut off, received nothing for
  // `idle_ns`, or `--drain` has passed (what is missing then but still arriving is late, not lost).
  const int64_t drain_end = now_ns() + static_cast<int64_t>(o.drain * 1e9);
  const int64_t idle_ns = 500'000'000;
  for (;;) {
    const int64_t t = now_ns();
    if (a.n.load() >= w.published || a.cut_off.load() || t > drain_end) break;
    if (t - std::max(a.last_ns.load(), end_ns) > idle_ns) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  w.received = a.n.load();
  w.rate = static_cast<double>(a.in_window.load()) / o.seconds;
  w.a_cut_off = a.cut_off.load();
  const uint64_t missing = w.published - std::min(w.published, w.received);
  const bool still_arriving = now_ns() - a.last_ns.load() < idle_ns;
  (w.a_cut_off || !still_arriving ? w.lost : w.late) = missing;
  w.b_published = b_sent.load();
  a_done = true;
  for (auto* c : {a_sub.get(), a_pub.get()}) shutdown(c->fd(), SHUT_RDWR);
  for (auto& t : threads) t.join();
  w.b_max_read_gap_ms = static_cast<double>(b.max_gap_ns) / 1e6;
  return w;
}

// Waits until one message of tenant A goes through the gateway, on fresh connections: on the NATS
// bus it is behind whatever the previous window left on the link, so the next window starts clean.
void settle(const Options& o) {
  auto sub = bg_connect(o.target, o.token);
  sub->sub(1, o.subject + ".settle");
  auto pub = bg_connect(o.target, o.token);
  pub->send_all(pub_batch(o.subject + ".settle", 1, 1));
  timeval tv{5, 0};
  setsockopt(sub->fd(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  proto::Frame f;
  while (sub->next(f))
    if (std::holds_alternative<proto::Msg>(f)) return;
}

std::string window_json(const Window& w) {
  using ull = unsigned long long;
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "{\"a_per_sec\":%.1f,\"a_published\":%llu,\"a_received\":%llu,\"a_lost\":%llu,\"a_late\":%llu,"
                "\"a_cut_off\":%s,\"b_published\":%llu,\"b_received\":%llu,\"b_cut_off\":%s,"
                "\"b_cut_off_ms\":%.1f,\"b_max_read_gap_ms\":%.1f}",
                w.rate, static_cast<ull>(w.published), static_cast<ull>(w.received), static_cast<ull>(w.lost),
                static_cast<ull>(w.late), w.a_cut_off ? "true" : "false", static_cast<ull>(w.b_published),
                static_cast<ull>(w.b_received), w.b_cut_off ? "true" : "false", w.b_cut_off_ms, w.b_max_read_gap_ms);
  return buf;
}

}  // namespace

void workload_cross(const Options& o) {
  if (o.target.starts_with("nats://")) throw std::runtime_error("cross needs a gateway target (two tenants)");
  if (o.token_b.empty() || o.token_b == o.token) throw std::runtime_error("cross needs --token-b, tenant B's token");
  const Window without = run_window(o, BMode::none);
  settle(o);
  std::string fields = "\"seconds\":" + std::to_string(o.seconds) +
                       ",\"b_read_rate\":" + std::to_string(o.b_read_rate) + ",\"without\":" + window_json(without);
  uint64_t lost = without.lost, late = without.late;
  for (BMode m : {BMode::stalled, BMode::slow, BMode::healthy}) {
    if (o.b_modes.find(mode_name(m)) == std::string::npos) continue;
    const Window with = run_window(o, m);
    settle(o);
    lost += with.lost;
    late += with.late;
    fields += std::string(",\"with_") + mode_name(m) + "\":" + window_json(with) + ",\"cross_" + mode_name(m) +
              "\":" + std::to_string(without.rate > 0 ? with.rate / without.rate : 0);
  }
  emit(o, fields + ",\"lost\":" + std::to_string(lost) + ",\"late\":" + std::to_string(late));
}

}  // namespace busgate::bench
