// The NATS link's write buffer (nats_writer.hpp), driven by hand the way the link thread drives
// it, with a real socket pair standing in for the connection (immediate writes go to it).
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <string>
#include <thread>
#include <vector>

#include "nats_writer.hpp"

using namespace busgate::gw;
using busgate::proto::Code;

namespace {

struct Pair {
  int a = -1, b = -1;  // a: the link's end, b: the server's
  Pair() {
    int fds[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
    a = fds[0];
    b = fds[1];
    ::fcntl(b, F_SETFL, ::fcntl(b, F_GETFL) | O_NONBLOCK);
  }
  ~Pair() {
    ::close(a);
    ::close(b);
  }
  // What the server end received so far.
  std::string received() const {
    std::string s;
    char buf[65536];
    for (;;) {
      const ssize_t n = ::recv(b, buf, sizeof buf, 0);
      if (n <= 0) break;
      s.append(buf, static_cast<size_t>(n));
    }
    return s;
  }
};

struct Harness {
  Pair sock;
  std::atomic<int> scheduled{0};
  NatsWriter w;
  explicit Harness(NatsWriter::Limits l = {}) : w([this] { scheduled.fetch_add(1); }, l) {}
  // What the link thread does: take a batch, "write" it, report it written.
  std::string flush() {
    const std::string* b = w.begin_batch();
    if (!b) return {};
    std::string s = *b;
    for (auto& f : w.end_batch()) f();
    return s;
  }
};

size_t count(const std::string& s, std::string_view needle) {
  size_t n = 0;
  for (size_t p = s.find(needle); p != std::string::npos; p = s.find(needle, p + needle.size())) ++n;
  return n;
}

}  // namespace

TEST_CASE("nats writer: PUB and HPUB encoding", "[nats_writer]") {
  std::string out;
  nats_encode_pub(out, "a.b", "", "", "hi");
  nats_encode_pub(out, "a.b", "r.1", "", "");
  nats_encode_pub(out, "a.b", "r.1", "NATS/1.0\r\nk: v\r\n\r\n", "xyz");
  CHECK(out == "PUB a.b 2\r\nhi\r\nPUB a.b r.1 0\r\n\r\nHPUB a.b r.1 18 21\r\nNATS/1.0\r\nk: v\r\n\r\nxyz\r\n");
}

TEST_CASE("nats writer: down refuses, and a ping fails at once", "[nats_writer]") {
  Harness h;
  CHECK(h.w.publish("s", "", "", "x", false) == Code::bus_unavailable);
  CHECK_FALSE(h.w.append("SUB s 1\r\n"));
  int answers = 0;
  bool ok = true;
  h.w.ping([&](bool r) {
    ++answers;
    ok = r;
  });
  CHECK(answers == 1);
  CHECK_FALSE(ok);
  CHECK(h.w.begin_batch() == nullptr);
  CHECK(h.scheduled == 0);
}

TEST_CASE("nats writer: batches, the replay first, immediate writes when idle", "[nats_writer]") {
  Harness h;
  h.w.go_up(h.sock.a, "SUB s 1\r\n");
  CHECK(h.w.up());
  // The first batch is the replay.
  CHECK(h.flush() == "SUB s 1\r\n");
  // Idle: a message somebody waits on goes out from this thread at once, nothing is scheduled.
  CHECK(h.w.publish("now", "", "", "1", true) == Code::ok);
  CHECK(h.sock.received() == "PUB now 1\r\n1\r\n");
  CHECK(h.scheduled == 0);
  // Batched messages wait for the link thread: one schedule for many.
  CHECK(h.w.publish("b", "", "", "1", false) == Code::ok);
  CHECK(h.w.publish("b", "", "", "2", false) == Code::ok);
  CHECK(h.w.publish("now", "", "", "3", true) == Code::ok);  // not idle: queued behind them, in order
  CHECK(h.scheduled == 1);
  CHECK(h.sock.received().empty());
  const std::string* batch = h.w.begin_batch();
  REQUIRE(batch);
  CHECK(*batch == "PUB b 1\r\n1\r\nPUB b 1\r\n2\r\nPUB now 1\r\n3\r\n");
  // While a batch is being written the next accumulates (no immediate write either).
  CHECK(h.w.publish("c", "", "", "4", true) == Code::ok);
  CHECK(h.w.begin_batch() == nullptr);
  CHECK(h.w.end_batch().empty());
  CHECK(h.flush() == "PUB c 1\r\n4\r\n");
  CHECK(h.sock.received().empty());
}

TEST_CASE("nats writer: pings made before a batch share one PING at its end", "[nats_writer]") {
  Harness h;
  h.w.go_up(h.sock.a, "");
  REQUIRE(h.w.publish("x", "", "", "1", false) == Code::ok);  // busy: a batch is due
  std::atomic<int> ok{0}, failed{0}, refused{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {  // no Catch assertions here: Catch is not thread-safe
      for (int i = 0; i < 250; ++i) {
        if (h.w.publish("y", "", "", "2", false) != Code::ok) refused.fetch_add(1);
        h.w.ping([&](bool r) { (r ? ok : failed).fetch_add(1); });
      }
    });
  for (auto& t : threads) t.join();
  CHECK(refused == 0);
  const std::string batch = h.flush();
  CHECK(count(batch, "PING\r\n") == 1);
  CHECK(batch.ends_with("PING\r\n"));  // after every publish made before the pings
  CHECK(count(batch, "PUB ") == 1001);
  CHECK(ok == 0);
  auto done = h.w.on_pong();
  REQUIRE(done);
  done();
  CHECK(ok == 1000);
  CHECK(failed == 0);
  CHECK_FALSE(h.w.on_pong());  // a PONG nobody asked for
}

TEST_CASE("nats writer: a ping joins the last PING when nothing was sent since", "[nats_writer]") {
  Harness h;
  h.w.go_up(h.sock.a, "");
  int a = 0, b = 0, c = 0;
  h.w.ping([&](bool r) { a += r; });  // idle: written at once
  CHECK(h.sock.received() == "PING\r\n");
  h.w.ping([&](bool r) { b += r; });  // nothing since: shares it
  CHECK(h.sock.received().empty());
  REQUIRE(h.w.publish("m", "", "", "", true) == Code::ok);
  h.w.ping([&](bool r) { c += r; });  // a message since: a PING of its own
  CHECK(h.sock.received() == "PUB m 0\r\n\r\nPING\r\n");
  h.w.on_pong()();
  CHECK((a == 1 && b == 1 && c == 0));
  h.w.on_pong()();
  CHECK(c == 1);
  // The keepalive PING always goes out; a ping made right after it waits for it.
  h.w.keepalive_ping();
  CHECK(h.sock.received() == "PING\r\n");
  int d = 0;
  h.w.ping([&](bool r) { d += r; });
  CHECK(h.sock.received().empty());
  h.w.on_pong()();
  CHECK(d == 1);
}

TEST_CASE("nats writer: a lost connection fails pings, keeps complete messages, realigns PONGs", "[nats_writer]") {
  Harness h;
  h.w.go_up(h.sock.a, "");
  REQUIRE(h.w.publish("a", "", "", "1", false) == Code::ok);
  int sent_ok = -1, queued_ok = -1, open_ok = -1;
  h.w.ping([&](bool r) { sent_ok = r; });
  const std::string* batch = h.w.begin_batch();  // the batch with the PING is being written...
  REQUIRE(batch);
  REQUIRE(h.w.publish("b", "", "", "2", false) == Code::ok);
  h.w.keepalive_ping();                                  // ... a keepalive PING is queued behind it ...
  h.w.ping([&](bool r) { queued_ok = r; });              // ... and a ping waits for the next batch
  REQUIRE(h.w.publish("c", "", "", "3", false) == Code::ok);
  h.w.ping([&](bool r) { open_ok = r; });
  bool drained = false;
  auto failed = h.w.go_down();
  for (auto& f : failed) f();
  CHECK(sent_ok == 0);
  CHECK(queued_ok == 0);
  CHECK(open_ok == 0);
  CHECK_FALSE(h.w.up());
  h.w.when_drained([&] { drained = true; });  // not congested: at once
  CHECK(drained);

  // What was queued and never handed to the socket goes out after the replay of the next
  // connection; its queued keepalive PING too, and the PONG to it completes nobody.
  h.w.go_up(h.sock.a, "SUB s 1\r\n");
  CHECK(h.flush() == "SUB s 1\r\nPUB b 1\r\n2\r\nPING\r\nPUB c 1\r\n3\r\n");
  int later = 0;
  h.w.ping([&](bool r) { later += r; });
  CHECK(h.sock.received() == "PING\r\n");
  CHECK_FALSE(h.w.on_pong());  // the old keepalive's PONG
  h.w.on_pong()();
  CHECK(later == 1);
}

TEST_CASE("nats writer: congestion past the bound, refusal past the hard bound, drained at half", "[nats_writer]") {
  NatsWriter::Limits lim;
  lim.congested = 1000;
  lim.refuse = 3000;
  Harness h(lim);
  h.w.go_up(h.sock.a, "");
  const std::string payload(90, 'p');  // 100 bytes a message
  int n = 0;
  while (!h.w.congested()) {
    REQUIRE(h.w.publish("s", "", "", payload, false) == Code::ok);
    REQUIRE(++n < 100);
  }
  CHECK(h.w.queued() > 1000);
  int drained = 0;
  h.w.when_drained([&] { ++drained; });
  CHECK(drained == 0);
  while (h.w.publish("s", "", "", payload, false) == Code::ok) REQUIRE(++n < 100);
  CHECK(h.w.queued() > 3000);
  CHECK(h.w.publish("s", "", "", payload, true) == Code::bus_unavailable);
  // One batch takes everything: what is left (nothing) is under half the bound.
  REQUIRE(h.w.begin_batch());
  CHECK(drained == 0);
  for (auto& f : h.w.end_batch()) f();
  CHECK(drained == 1);
  CHECK_FALSE(h.w.congested());
  CHECK(h.w.publish("s", "", "", payload, false) == Code::ok);
  // Drain waiters are released when the connection is lost, too.
  for (int i = 0; i < 12; ++i) REQUIRE(h.w.publish("s", "", "", payload, false) == Code::ok);
  REQUIRE(h.w.congested());
  h.w.when_drained([&] { ++drained; });
  for (auto& f : h.w.go_down()) f();
  CHECK(drained == 2);
}

TEST_CASE("nats writer: a partial immediate write queues its tail first, and a lost connection drops it",
          "[nats_writer]") {
  Harness h;
  int small = 4096;
  ::setsockopt(h.sock.a, SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
  h.w.go_up(h.sock.a, "");
  const std::string big(1 << 20, 'z');
  REQUIRE(h.w.publish("big", "", "", big, true) == Code::ok);
  const std::string first = h.sock.received();
  REQUIRE(!first.empty());
  REQUIRE(first.size() < big.size());
  CHECK(h.scheduled == 1);
  REQUIRE(h.w.publish("next", "", "", "n", false) == Code::ok);
  const std::string* batch = h.w.begin_batch();
  REQUIRE(batch);
  const std::string whole = first + *batch;
  std::string expect;
  nats_encode_pub(expect, "big", "", "", big);
  nats_encode_pub(expect, "next", "", "", "n");
  CHECK(whole == expect);
  for (auto& f : h.w.end_batch()) f();

  // Once more, but the connection is lost before the tail went out: the tail cannot be sent on a
  // new connection (it is half a message), the complete message behind it can.
  (void)h.sock.received();
  REQUIRE(h.w.publish("big", "", "", big, true) == Code::ok);
  REQUIRE(h.w.publish("after", "", "", "a", false) == Code::ok);
  for (auto& f : h.w.go_down()) f();
  h.w.go_up(h.sock.a, "");
  CHECK(h.flush() == "PUB after 1\r\na\r\n");
}
