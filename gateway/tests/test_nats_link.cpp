// The NATS link against a NATS server played by hand (test_nats_fake.hpp): what it does with
// malformed input, -ERR, PING storms, input cut at every byte, a lost server, and the cluster.
#include <catch2/catch.hpp>
#include <stdexcept>

#include "nats_link.hpp"
#include "test_nats_fake.hpp"

using namespace busgate::gw;
using namespace busgate::gw::test;
using busgate::proto::Code;

namespace {

std::unique_ptr<NatsLink> make_link(Recorder& rec, const NatsLinkOptions& opt) {
  auto link = std::make_unique<NatsLink>(opt, rec.on_msg(), rec.on_event(), rec.on_refused());
  link->subscribe(1, "in", "");
  (void)link->start(std::chrono::milliseconds(0));  // the test plays the server meanwhile
  return link;
}

// Accepts the link's next connection and answers its handshake; the replay of sid 1 follows.
std::unique_ptr<FakePeer> connect(FakeListener& server,
                                  std::string_view info = R"({"server_id":"fake","max_payload":1024})") {
  auto peer = server.accept();
  REQUIRE(peer);
  REQUIRE(peer->handshake(info));
  REQUIRE(peer->wait_for("SUB in 1\r\n"));
  return peer;
}

}  // namespace

TEST_CASE("nats link: a malformed or missing INFO ends the attempt with a log line, and the next one connects",
          "[nats_link]") {
  const std::string bad = GENERATE(std::string("INFO {not json}\r\n"), std::string("INFO [1,2]\r\n"),
                                   std::string("INFO \"text\"\r\n"), std::string("HELLO\r\n"),
                                   std::string("PING\r\n"), std::string("MSG in 1 2\r\nhi\r\n"),
                                   "INFO {\"k\":\"" + std::string(70000, 'v') + "\"}\r\n");
  INFO(bad.substr(0, 30));
  LogCapture log;
  FakeListener server;
  Recorder rec;
  auto link = make_link(rec, fake_options({server.url()}));
  {
    auto first = server.accept();
    REQUIRE(first);
    first->send(bad);
    CHECK(first->wait_closed());  // the link hangs up
  }
  CHECK(eventually([&] { return log.has("cannot connect to " + server.url()); }));
  auto second = connect(server);
  REQUIRE(rec.wait([&] { return !rec.events.empty(); }));
  CHECK(rec.event_names() == std::vector<std::string>{"connected"});
  CHECK(link->connected());
  CHECK(link->reconnects() == 0);
  CHECK(rec.payloads().empty());
}

TEST_CASE("nats link: a malformed MSG or HMSG ends the connection with a log line, and the link reconnects",
          "[nats_link]") {
  const std::string bad = GENERATE(
      std::string("MSG in 1 2000\r\n"),                         // above the announced max_payload (1024)
      std::string("MSG in 1 3\r\nabcXY\r\n"),                   // no CRLF after the payload
      std::string("MSG in 1 -3\r\n"), std::string("MSG in 1 3x\r\n"), std::string("MSG in 1 0x10\r\n"),
      std::string("MSG in 1\r\n"),                              // no size
      std::string("MSG in 1 99999999999999999999999\r\n"),      // overflows
      std::string("MSG in one 2\r\nhi\r\n"),                    // sid not a number
      std::string("HMSG in 1 30 20\r\n"),                       // headers larger than the whole
      std::string("HMSG in 1 x 14\r\n"), std::string("HMSG in 1 12\r\n"),
      std::string("HMSG in 1 12 70000\r\n"),                    // above max_payload + the server's header slack
      std::string("HMSG in 1 12 14\r\nNATS/1.0\r\n\r\nhiXX"),   // no CRLF after the payload
      std::string("MSG " + std::string(8000, 's') + " 1 1\r\n"),  // a control line past its bound
      std::string("XYZZY\r\n"));
  INFO(bad.substr(0, 40));
  LogCapture log;
  FakeListener server;
  Recorder rec;
  auto link = make_link(rec, fake_options({server.url()}));
  {
    auto first = connect(server);
    REQUIRE(first->send("MSG in 1 2\r\nhi\r\n" + bad));
    CHECK(first->wait_closed());
  }
  CHECK(eventually([&] { return log.has("protocol error from the server"); }));
  CHECK(log.has("disconnected from " + server.url()));
  auto second = connect(server);
  REQUIRE(second->send("HMSG in 1 12 17\r\nNATS/1.0\r\n\r\nagain\r\n"));
  REQUIRE(rec.wait([&] { return rec.msgs.size() >= 2 && rec.events.size() >= 3; }));
  CHECK(rec.payloads() == std::vector<std::string>{"hi", "again"});
  CHECK(rec.event_names() == std::vector<std::string>{"connected", "disconnected", "reconnected"});
  CHECK(link->reconnects() == 1);
  CHECK(link->connected());
}

TEST_CASE("nats link: -ERR for a refused SUB drops that subscription before the PONG, and the link stays up",
          "[nats_link]") {
  LogCapture log;
  FakeListener server;
  Recorder rec;
  auto link = make_link(rec, fake_options({server.url()}));
  auto peer = connect(server);
  REQUIRE(rec.wait([&] { return !rec.events.empty(); }));

  link->subscribe(5, "secret.x", "");
  link->subscribe(6, "secret.x", "q");
  std::atomic<int> pong{-1};
  size_t refused_at_pong = 99;
  link->ping([&](bool ok) {
    {
      std::lock_guard lk(rec.mu);
      refused_at_pong = rec.refused.size();
    }
    pong = ok;
  });
  REQUIRE(peer->wait_for("SUB secret.x 5\r\nSUB secret.x q 6\r\nPING\r\n"));
  REQUIRE(peer->send("-ERR 'Permissions Violation for Subscription to \"secret.x\"'\r\nPONG\r\n"));
  REQUIRE(eventually([&] { return pong.load() >= 0; }));
  CHECK(pong == 1);
  CHECK(refused_at_pong == 1);  // the refusal was known before the PONG was
  {
    std::lock_guard lk(rec.mu);
    REQUIRE(rec.refused.size() == 1);
    CHECK(rec.refused[0].first == 5);
    CHECK(rec.refused[0].second.find("Permissions Violation") != std::string::npos);
  }
  CHECK(log.has("refused the subscription to secret.x"));

  // A refused publish is counted and logged, and is no reason to disconnect either.
  CHECK(link->publish("no.go", "", "", "x", true) == Code::ok);
  REQUIRE(peer->wait_for("PUB no.go 1\r\nx\r\n"));
  REQUIRE(peer->send("-ERR 'Permissions Violation for Publish to \"no.go\"'\r\nMSG in 1 2\r\nok\r\n"));
  REQUIRE(rec.wait([&] { return !rec.msgs.empty(); }));
  CHECK(link->publishes_refused() == 1);
  CHECK(log.has("refused a publish to no.go"));
  CHECK(link->connected());
  CHECK(rec.event_names() == std::vector<std::string>{"connected"});

  // The next connection does not ask for the refused subscription again, but for the other.
  peer->close();
  auto again = connect(server);
  REQUIRE(again->wait_for("SUB secret.x q 6\r\n"));
  again->drain_for(50ms);
  CHECK(again->got().find("SUB secret.x 5") == std::string::npos);
}

TEST_CASE("nats link: a PING storm is answered PING for PONG and the link stays up", "[nats_link]") {
  FakeListener server;
  Recorder rec;
  auto link = make_link(rec, fake_options({server.url()}));
  auto peer = connect(server);
  constexpr int kRounds = 40, kPerRound = 500;
  std::string burst;
  for (int i = 0; i < kPerRound; ++i) burst += "PING\r\n";
  for (int r = 0; r < kRounds; ++r) {
    REQUIRE(peer->send(r % 2 ? burst : burst.substr(0, burst.size() - 3)));  // half the rounds end mid-PING
    if (r % 2 == 0) REQUIRE(peer->send(burst.substr(burst.size() - 3)));
  }
  REQUIRE(peer->send("MSG in 1 4\r\nlast\r\n"));
  CHECK(peer->wait_count("PONG\r\n", kRounds * kPerRound, 10000ms));
  REQUIRE(rec.wait([&] { return !rec.msgs.empty(); }));
  peer->drain_for(50ms);
  CHECK(peer->count("PONG\r\n") == kRounds * kPerRound);
  CHECK(rec.payloads() == std::vector<std::string>{"last"});
  CHECK(link->connected());
  CHECK(rec.event_names() == std::vector<std::string>{"connected"});
}

namespace {

// Server traffic of every kind, with payloads that hold CRLF and a header block.
const std::string kStream =
    "MSG in 1 5\r\nhello\r\n"
    "HMSG in 1 r.1 18 21\r\nNATS/1.0\r\nk: v\r\n\r\nxyz\r\n"
    "PING\r\n"
    "+OK\r\n"
    "INFO {\"server_id\":\"fake\",\"max_payload\":1024}\r\n"
    "MSG in 1 reply.to 4\r\na\r\nb\r\n"
    "MSG in 1 0\r\n\r\n";

void check_stream(Recorder& rec, size_t from) {
  std::lock_guard lk(rec.mu);
  REQUIRE(rec.msgs.size() == from + 4);
  const auto* m = &rec.msgs[from];
  CHECK((m[0].sid == 1 && m[0].subject == "in" && m[0].reply.empty() && m[0].headers.empty()));
  CHECK(m[0].payload == "hello");
  CHECK(m[1].reply == "r.1");
  CHECK(m[1].headers == "NATS/1.0\r\nk: v\r\n\r\n");
  CHECK(m[1].payload == "xyz");
  CHECK(m[2].reply == "reply.to");
  CHECK(m[2].payload == "a\r\nb");
  CHECK(m[3].payload.empty());
}

}  // namespace

TEST_CASE("nats link: the server's bytes one at a time, handshake included", "[nats_link]") {
  FakeListener server;
  Recorder rec;
  auto link = make_link(rec, fake_options({server.url()}));
  auto peer = server.accept();
  REQUIRE(peer);
  auto trickle = [&](std::string_view s) {
    for (const char c : s) {
      REQUIRE(peer->send(std::string_view(&c, 1)));
      std::this_thread::sleep_for(std::chrono::microseconds(300));
    }
  };
  trickle("INFO {\"server_id\":\"fake\",\"max_payload\":1024}\r\n");
  REQUIRE(peer->wait_for("PING\r\n"));
  trickle("PONG\r\n");
  REQUIRE(peer->wait_for("SUB in 1\r\n"));
  trickle(kStream);
  REQUIRE(rec.wait([&] { return rec.msgs.size() >= 4; }));
  check_stream(rec, 0);
  CHECK(peer->wait_for("PONG\r\n"));
  CHECK(link->connected());
  CHECK(rec.event_names() == std::vector<std::string>{"connected"});
}

TEST_CASE("nats link: the server's bytes in two reads, cut at every byte boundary", "[nats_link]") {
  FakeListener server;
  Recorder rec;
  auto link = make_link(rec, fake_options({server.url()}));
  auto peer = connect(server);
  for (size_t cut = 1; cut < kStream.size(); ++cut) {
    INFO("cut at " << cut);
    REQUIRE(peer->send(std::string_view(kStream).substr(0, cut)));
    std::this_thread::sleep_for(std::chrono::microseconds(500));
    REQUIRE(peer->send(std::string_view(kStream).substr(cut)));
    const size_t want = 4 * cut;
    REQUIRE(rec.wait([&] { return rec.msgs.size() >= want; }));
    check_stream(rec, want - 4);
  }
  CHECK(peer->wait_count("PONG\r\n", kStream.size() - 1));
  CHECK(link->connected());
  CHECK(rec.event_names() == std::vector<std::string>{"connected"});
}

TEST_CASE("nats link: a lost server: the next one in the pool, subscriptions replayed before anything else",
          "[nats_link]") {
  LogCapture log;
  FakeListener a, b;
  Recorder rec;
  auto link = make_link(rec, fake_options({a.url(), b.url()}));
  link->subscribe(2, "q.x", "workers");
  link->subscribe(3, "gone", "");
  link->unsubscribe(3);
  auto pa = connect(a);
  REQUIRE(pa->wait_for("SUB q.x workers 2\r\n"));
  REQUIRE(rec.wait([&] { return !rec.events.empty(); }));
  CHECK(pa->got().find("gone") == std::string::npos);  // unsubscribed before it was sent
  link->subscribe(4, "late", "");
  REQUIRE(pa->wait_for("SUB late 4\r\n"));

  int lost = -1;
  link->ping([&](bool ok) { lost = ok; });
  REQUIRE(pa->wait_for("PING\r\n", 5000ms, pa->got().find("SUB late 4")));
  a.close();  // nobody listens there any more
  pa->close();
  REQUIRE(rec.wait([&] { return rec.events.size() >= 2; }));
  CHECK(lost == 0);  // its PONG can never come
  CHECK(link->publish("while.down", "", "", "x", false) == Code::bus_unavailable);

  auto pb = b.accept();
  REQUIRE(pb);
  REQUIRE(pb->handshake());
  REQUIRE(pb->wait_for("SUB late 4\r\n"));
  REQUIRE(rec.wait([&] { return rec.events.size() >= 3; }));
  CHECK(link->publish("after", "", "", "x", false) == Code::ok);
  REQUIRE(pb->wait_for("PUB after 1\r\nx\r\n"));
  // After CONNECT and its PING: the subscriptions, then the publish.
  const std::string& got = pb->got();
  const size_t from = got.find("PING\r\n") + 6;
  CHECK(got.substr(from) == "SUB in 1\r\nSUB q.x workers 2\r\nSUB late 4\r\nPUB after 1\r\nx\r\n");
  REQUIRE(pb->send("MSG q.x 2 2\r\nok\r\n"));
  REQUIRE(rec.wait([&] { return !rec.msgs.empty(); }));
  {
    std::lock_guard lk(rec.mu);
    CHECK(rec.msgs[0].sid == 2);
    CHECK(rec.events == std::vector<std::string>{"connected " + a.url(), "disconnected " + a.url(),
                                                 "reconnected " + b.url()});
  }
  CHECK(link->reconnects() == 1);
  CHECK(log.has("disconnected from " + a.url()));
  CHECK(log.has("re-established to " + b.url()));
}

TEST_CASE("nats link: a server the cluster announces is tried when the configured one is gone", "[nats_link]") {
  FakeListener a, b;
  Recorder rec;
  auto link = make_link(rec, fake_options({a.url()}));
  auto pa = connect(a, R"({"server_id":"a","max_payload":1024,"connect_urls":["127.0.0.1:)" + std::to_string(b.port()) +
                           R"("]})");
  REQUIRE(rec.wait([&] { return !rec.events.empty(); }));
  a.close();
  pa->close();
  auto pb = connect(b);
  REQUIRE(rec.wait([&] { return rec.events.size() >= 3; }));
  std::lock_guard lk(rec.mu);
  CHECK(rec.events.back() == "reconnected nats://127.0.0.1:" + std::to_string(b.port()));
}

TEST_CASE("nats link: unanswered keepalive PINGs end a stale connection", "[nats_link]") {
  LogCapture log;
  FakeListener server;
  Recorder rec;
  auto opt = fake_options({server.url()});
  opt.ping_interval_ms = 100;
  opt.max_pings_out = 2;
  auto link = make_link(rec, opt);
  auto peer = connect(server);
  // Answered, the connection lives on.
  for (int i = 0; i < 5; ++i) {
    REQUIRE(peer->wait_count("PING\r\n", 2 + static_cast<size_t>(i)));  // (the handshake's PING is the first)
    REQUIRE(peer->send("PONG\r\n"));
  }
  CHECK(rec.event_names() == std::vector<std::string>{"connected"});
  // Unanswered, it is dropped after two.
  CHECK(peer->wait_closed(2000ms));
  CHECK(eventually([&] { return log.has("stale connection"); }));
  auto again = connect(server);
  CHECK(rec.wait([&] { return rec.events.size() >= 3; }));
}

TEST_CASE("nats link: an exception from a callback resets the connection, the link thread goes on",
          "[nats_link]") {
  LogCapture log;
  FakeListener server;
  Recorder rec;
  std::atomic<int> seen{0};
  NatsLink link(
      fake_options({server.url()}),
      [&](const NatsInbound& m) {
        seen.fetch_add(1);
        if (m.payload == "boom") throw std::runtime_error("callback failed");
        rec.on_msg()(m);
      },
      rec.on_event());
  link.subscribe(1, "in", "");
  (void)link.start(std::chrono::milliseconds(0));
  auto first = connect(server);
  REQUIRE(first->send("MSG in 1 4\r\nboom\r\n"));
  CHECK(first->wait_closed());
  CHECK(eventually([&] { return log.has("callback failed"); }));
  auto second = connect(server);
  REQUIRE(second->send("MSG in 1 2\r\nok\r\n"));
  REQUIRE(rec.wait([&] { return !rec.msgs.empty() && rec.events.size() >= 3; }));
  CHECK(rec.payloads() == std::vector<std::string>{"ok"});
  CHECK(link.connected());
}
