// NatsBus against a NATS server played by hand (test_nats_fake.hpp): what the bus answers when the
// server refuses a subscription, the publish barrier confirm(), and what waits on a connection that
// is lost.
#include <catch2/catch.hpp>
#include <future>

#include "durable.hpp"
#include "nats_bus.hpp"
#include "test_nats_fake.hpp"

using namespace busgate::gw;
using namespace busgate::gw::test;
using busgate::proto::Code;

namespace {

struct BusOnFake {
  FakeListener server;
  std::unique_ptr<FakePeer> peer;
  std::unique_ptr<NatsBus> bus;

  BusOnFake() {
    GatewayConfig cfg;
    cfg.node_id = "n1";
    cfg.bus.kind = "nats";
    cfg.bus.servers = {server.url()};
    cfg.bus.name = "bus-test";
    std::thread srv([this] {
      peer = server.accept();
      if (peer) peer->handshake();
    });
    bus = std::make_unique<NatsBus>(cfg);  // waits for the first connection
    srv.join();
    REQUIRE(peer);
    REQUIRE(peer->wait_for("SUB _INBOX.n1.* 1\r\n"));
    REQUIRE(bus->healthy());
  }
  ~BusOnFake() { bus.reset(); }

  size_t mark() const { return peer->got().size(); }
  // The sid of the first SUB to `subject` received after `from`, once a PING followed it; 0 when
  // none came. (No REQUIRE: also used from a thread playing the server.)
  uint64_t sub_sid(const std::string& subject, size_t from) {
    const std::string needle = "SUB " + subject + " ";
    if (!peer->wait_for(needle, 5000ms, from)) return 0;
    const size_t at = peer->got().find(needle, from);
    if (!peer->wait_for("PING\r\n", 5000ms, at)) return 0;
    return std::stoull(peer->got().substr(at + needle.size()));
  }
};

BusMessagePtr message(std::string_view subject, std::string_view payload) {
  return std::make_shared<const BusMessage>(subject, "", "", payload);
}

struct Answer {
  std::promise<Code> p;
  std::future<Code> f = p.get_future();
  CodeFn fn() {
    return [this](Code c) { p.set_value(c); };
  }
  bool ready(Ms wait = 0ms) const { return f.wait_for(wait) == std::future_status::ready; }
};

}  // namespace

TEST_CASE("nats bus: a SUB the server refuses is answered permission_denied, and nothing is live",
          "[nats_bus]") {
  BusOnFake t;
  std::atomic<int> delivered{0};
  auto deliver = [&](const BusMessagePtr&) { delivered.fetch_add(1); };
  Answer first, joined;
  const size_t m1 = t.mark();
  const uint64_t id1 = t.bus->subscribe_async("t.demo.secret", "", deliver, first.fn());
  const uint64_t id2 = t.bus->subscribe_async("t.demo.secret", "", deliver, joined.fn());
  CHECK((id1 != 0 && id2 != 0));
  const uint64_t sid = t.sub_sid("t.demo.secret", m1);
  REQUIRE(sid != 0);
  REQUIRE(t.peer->wait_count("PING\r\n", 2));  // the handshake's, and the subscriptions' (shared)
  CHECK_FALSE(first.ready(50ms));  // no answer before the server's
  REQUIRE(t.peer->send("-ERR 'Permissions Violation for Subscription to \"t.demo.secret\"'\r\nPONG\r\n"));
  REQUIRE(first.ready(5000ms));
  REQUIRE(joined.ready(5000ms));
  CHECK(first.f.get() == Code::permission_denied);
  CHECK(joined.f.get() == Code::permission_denied);
  CHECK(t.bus->stats().subscriptions_refused == 1);
  // Whatever the server might still send for it reaches nobody.
  REQUIRE(t.peer->send("MSG t.demo.secret " + std::to_string(sid) + " 1\r\nx\r\n"));
  t.bus->unsubscribe(id1);  // harmless

  // Asked again, the bus asks the server again; this time it agrees.
  Answer again;
  const size_t m2 = t.mark();
  const uint64_t id3 = t.bus->subscribe_async("t.demo.secret", "", deliver, again.fn());
  const uint64_t sid2 = t.sub_sid("t.demo.secret", m2);
  REQUIRE(sid2 != 0);
  CHECK(sid2 != sid);
  REQUIRE(t.peer->send("PONG\r\n"));
  REQUIRE(again.ready(5000ms));
  CHECK(again.f.get() == Code::ok);
  REQUIRE(t.peer->send("MSG t.demo.secret " + std::to_string(sid2) + " 1\r\ny\r\n"));
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (delivered.load() < 1 && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(5ms);
  t.peer->drain_for(50ms);
  CHECK(delivered.load() == 1);  // "y" only
  t.bus->unsubscribe(id3);
  CHECK(t.peer->wait_for("UNSUB " + std::to_string(sid2) + "\r\n"));
  CHECK(t.peer->got().find("UNSUB " + std::to_string(sid) + "\r\n") == std::string::npos);

  // The waiting subscribe() says 0 for a refusal.
  const size_t m3 = t.mark();
  std::thread srv([&] {
    if (t.sub_sid("t.demo.other", m3) != 0)
      t.peer->send("-ERR 'Permissions Violation for Subscription to \"t.demo.other\"'\r\nPONG\r\n");
  });
  CHECK(t.bus->subscribe("t.demo.other", "", deliver) == 0);
  srv.join();
}

TEST_CASE("nats bus: confirm() answers once the server has everything published before it", "[nats_bus]") {
  BusOnFake t;
  for (int i = 0; i < 3; ++i) REQUIRE(t.bus->publish(message("t.demo.a", "m" + std::to_string(i)), false) == Code::ok);
  Answer a, b;
  t.bus->confirm(a.fn());
  t.bus->confirm(b.fn());
  REQUIRE(t.peer->wait_for("PUB t.demo.a 2\r\nm2\r\nPING\r\n"));
  t.peer->drain_for(50ms);
  CHECK(t.peer->count("PING\r\n") == 2);  // the handshake's, and one for both
  CHECK_FALSE(a.ready(100ms));            // the server has not answered
  CHECK_FALSE(b.ready());
  REQUIRE(t.peer->send("PONG\r\n"));
  REQUIRE(a.ready(5000ms));
  REQUIRE(b.ready(5000ms));
  CHECK(a.f.get() == Code::ok);
  CHECK(b.f.get() == Code::ok);

  // A connection lost before the answer: bus_unavailable, at once.
  REQUIRE(t.bus->publish(message("t.demo.a", "lost?"), true) == Code::ok);
  Answer c;
  t.bus->confirm(c.fn());
  REQUIRE(t.peer->wait_for("lost?\r\nPING\r\n"));
  t.peer->close();
  REQUIRE(c.ready(2000ms));
  CHECK(c.f.get() == Code::bus_unavailable);
  // And while the bus is down: bus_unavailable before confirm() returns.
  Answer d;
  t.bus->confirm(d.fn());
  CHECK(d.ready());
  CHECK(d.f.get() == Code::bus_unavailable);
}

TEST_CASE("nats bus: requests and stored publishes waiting on a lost connection fail at once", "[nats_bus]") {
  BusOnFake t;
  std::promise<Code> req;
  auto rf = req.get_future();
  auto msg = std::make_shared<BusMessage>("t.demo.svc", "", "", "q");
  t.bus->request(msg, [&](Code c, const BusMessagePtr&) { req.set_value(c); });
  std::promise<Code> stored;
  auto sf = stored.get_future();
  t.bus->durable()->publish_stored(message("t.demo.jobs.1", "job"), "",
                                   [&](Code c, std::string) { stored.set_value(c); });
  REQUIRE(t.peer->wait_for("PUB t.demo.svc _INBOX.n1."));
  REQUIRE(t.peer->wait_for("PUB t.demo.jobs.1 _INBOX.n1.js."));
  CHECK(rf.wait_for(100ms) == std::future_status::timeout);
  const auto t0 = std::chrono::steady_clock::now();
  t.peer->close();
  REQUIRE(rf.wait_for(2000ms) == std::future_status::ready);
  REQUIRE(sf.wait_for(2000ms) == std::future_status::ready);
  CHECK(std::chrono::steady_clock::now() - t0 < 1000ms);
  CHECK(rf.get() == Code::bus_unavailable);
  CHECK(sf.get() == Code::bus_unavailable);
}
