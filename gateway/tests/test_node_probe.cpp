// Request inbox tokens (random, base-62) and the node id probe (node_probe.hpp): several nodes with
// one id on a simulated bus that delivers every inbox message to every node, the sender included.
#include <catch2/catch.hpp>

#include <set>

#include "bus.hpp"
#include "busgate/protocol/msgpack.hpp"
#include "memory_bus.hpp"
#include "nats_bus.hpp"
#include "node_probe.hpp"

using namespace busgate::gw;
using busgate::proto::Code;
using namespace std::chrono_literals;

TEST_CASE("inbox tokens: fixed-width base-62, parsed back exactly", "[inbox]") {
  for (uint64_t t : {uint64_t{1}, uint64_t{61}, uint64_t{62}, uint64_t{0x0123456789abcdef}, ~uint64_t{0}}) {
    std::string s;
    append_inbox_token(s, t);
    CHECK(s.size() == kInboxTokenChars);
    uint64_t back = 0;
    CHECK(parse_inbox_token(s, back));
    CHECK(back == t);
  }
  std::string max;
  append_inbox_token(max, ~uint64_t{0});
  CHECK(max == "LygHa16AHYF");
  uint64_t t = 0;
  CHECK_FALSE(parse_inbox_token("LygHa16AHYG", t));  // 2^64: above 64 bits
  CHECK_FALSE(parse_inbox_token("zzzzzzzzzzz", t));
  CHECK_FALSE(parse_inbox_token("0000000001", t));    // 10 characters
  CHECK_FALSE(parse_inbox_token("000000000001", t));  // 12
  CHECK_FALSE(parse_inbox_token("0000000000-", t));
  CHECK_FALSE(parse_inbox_token("probe-s-0123", t));
}

TEST_CASE("inbox tokens: random, never 0, no repeats", "[inbox]") {
  std::set<uint64_t> seen;
  int high_bit = 0;
  for (int i = 0; i < 20000; ++i) {
    const uint64_t t = random_token();
    CHECK(t != 0);
    CHECK(seen.insert(t).second);
    high_bit += static_cast<int>(t >> 63);
  }
  CHECK(high_bit > 9000);  // about half: the whole 64 bits are random
  CHECK(high_bit < 11000);
}

TEST_CASE("memory bus: a reply to a guessed inbox never reaches the requester", "[inbox]") {
  MemoryBus bus("n1");
  std::vector<std::string> inboxes;
  bus.subscribe("svc.slow", "", [&](const BusMessagePtr& m) { inboxes.emplace_back(m->reply_to); });
  int calls = 0;
  std::string answer;
  for (int i = 0; i < 3; ++i)
    bus.request(std::make_shared<BusMessage>("svc.slow", "", "", ""), [&](Code, const BusMessagePtr& m) {
      ++calls;
      answer = std::string(m->payload);
    });
  REQUIRE(inboxes.size() == 3);
  for (const auto& in : inboxes) {
    REQUIRE(in.starts_with("_INBOX.n1."));
    REQUIRE(in.size() == 10 + kInboxTokenChars);
  }
  // Neighbours of every token seen, and small numbers as the old sequential inboxes had.
  for (const auto& in : inboxes) {
    uint64_t t = 0;
    REQUIRE(parse_inbox_token(std::string_view(in).substr(10), t));
    for (uint64_t guess : {t - 1, t + 1, t + 2, t ^ 1}) {
      std::string g = "_INBOX.n1.";
      append_inbox_token(g, guess);
      bus.publish(std::make_shared<const BusMessage>(g, "", "", "forged"), false);
    }
  }
  for (int n = 0; n < 50; ++n)
    bus.publish(std::make_shared<const BusMessage>("_INBOX.n1." + std::to_string(n), "", "", "forged"), false);
  CHECK(calls == 0);
  bus.publish(std::make_shared<const BusMessage>(inboxes[1], "", "", "real"), false);
  CHECK(calls == 1);
  CHECK(answer == "real");
}

namespace {

using Clock = NodeIdProbe::Clock;

// Nodes with one id on a bus that delivers each inbox token to every connected node (as NATS does
// through their identical `_INBOX.<id>.*` subscriptions), answers included, until nothing is left.
struct SimBus {
  std::vector<NodeIdProbe> nodes;
  std::vector<bool> up;
  std::vector<int> conflicts;
  std::vector<int> losses;
  Clock::time_point now = Clock::now();

  explicit SimBus(std::vector<uint64_t> nonces) {
    for (uint64_t n : nonces) nodes.emplace_back(n, NodeIdProbe::Options{300ms, 2000ms, 0ms});
    up.assign(nodes.size(), false);
    conflicts.assign(nodes.size(), 0);
    losses.assign(nodes.size(), 0);
  }
  void publish(std::vector<std::string> pending) {
    while (!pending.empty()) {
      const std::string tok = pending.front();
      pending.erase(pending.begin());
      for (size_t i = 0; i < nodes.size(); ++i) {
        if (!up[i]) continue;
        auto r = nodes[i].on_inbox(tok, now);
        conflicts[i] += r.conflict;
        losses[i] += r.lost;
        if (!r.answer.empty()) pending.push_back(r.answer);
      }
    }
  }
  void connect(std::vector<size_t> which) {
    std::vector<std::string> probes;
    for (size_t i : which) {
      up[i] = true;
      probes.push_back(nodes[i].on_connected(now));
    }
    publish(probes);
  }
  void disconnect(size_t i) {
    up[i] = false;
    nodes[i].on_disconnected();
  }
  void advance(Clock::duration d) {
    const auto end = now + d;
    for (;;) {
      auto next = Clock::time_point::max();
      for (auto& n : nodes) next = std::min(next, n.next_tick());
      if (next > end) break;
      now = std::max(now, next);
      std::vector<std::string> probes;
      for (size_t i = 0; i < nodes.size(); ++i) {
        auto p = nodes[i].tick(now, up[i]);
        if (!p.empty()) probes.push_back(p);
      }
      publish(probes);
    }
    now = end;
    for (size_t i = 0; i < nodes.size(); ++i) nodes[i].tick(now, up[i]);
  }
  int ready_count() const {
    int n = 0;
    for (size_t i = 0; i < nodes.size(); ++i) n += up[i] && nodes[i].ready();
    return n;
  }
};

}  // namespace

TEST_CASE("node probe: alone, a node is ready after one window", "[node_probe]") {
  SimBus b({0x10});
  CHECK(b.nodes[0].state() == NodeIdProbe::State::unknown);
  b.connect({0});
  CHECK(b.nodes[0].state() == NodeIdProbe::State::starting);  // its own probe came back: ignored
  b.advance(299ms);
  CHECK_FALSE(b.nodes[0].ready());
  b.advance(1ms);
  CHECK(b.nodes[0].ready());
  CHECK(b.conflicts[0] == 0);
}

TEST_CASE("node probe: the second node with an id stays unready until the first is gone", "[node_probe]") {
  for (auto nonces : {std::vector<uint64_t>{1, 2}, std::vector<uint64_t>{2, 1}}) {  // nonce order does not matter
    SimBus b(nonces);
    b.connect({0});
    b.advance(400ms);
    REQUIRE(b.nodes[0].ready());
    b.connect({1});
    CHECK(b.nodes[1].state() == NodeIdProbe::State::duplicate);
    CHECK(b.losses[1] == 1);
    CHECK(b.conflicts[0] == 1);
    b.advance(10s);  // it asks again every 2 s; the first keeps answering
    CHECK(b.nodes[0].ready());
    CHECK(b.nodes[1].state() == NodeIdProbe::State::duplicate);
    CHECK(b.conflicts[0] >= 5);
    CHECK(b.losses[1] == 1);  // lost once, not again at every probe
    // The first reconnects: the duplicate does not answer, the first stays ready.
    b.disconnect(0);
    b.connect({0});
    b.advance(400ms);
    CHECK(b.nodes[0].ready());
    CHECK(b.nodes[1].state() == NodeIdProbe::State::duplicate);
    // The first goes away: the next probe is not answered, the second takes over.
    b.disconnect(0);
    b.advance(2300ms);
    CHECK(b.nodes[1].ready());
    CHECK(b.nodes[1].take_recovered());
    // The first comes back: now it is the one that waits.
    b.nodes[0] = NodeIdProbe(nonces[0], NodeIdProbe::Options{300ms, 2000ms, 0ms});
    b.connect({0});
    CHECK(b.nodes[0].state() == NodeIdProbe::State::duplicate);
    CHECK(b.nodes[1].ready());
  }
}

TEST_CASE("node probe: nodes starting together, or reconnecting together: exactly one is ready", "[node_probe]") {
  for (auto nonces : {std::vector<uint64_t>{5, 9}, std::vector<uint64_t>{9, 5}, std::vector<uint64_t>{7, 3, 8}}) {
    SimBus b(nonces);
    std::vector<size_t> all;
    for (size_t i = 0; i < nonces.size(); ++i) all.push_back(i);
    b.connect(all);
    b.advance(400ms);
    CHECK(b.ready_count() == 1);
    b.advance(10s);
    CHECK(b.ready_count() == 1);
    // The bus server restarts: every node reconnects at once.
    for (size_t i : all) b.disconnect(i);
    b.connect(all);
    b.advance(400ms);
    CHECK(b.ready_count() == 1);
    b.advance(10s);
    CHECK(b.ready_count() == 1);
  }
}

TEST_CASE("node probe: two ready nodes meeting (a healed partition): one stays ready", "[node_probe]") {
  for (bool together : {false, true}) {
    SimBus b({4, 6});
    b.connect({0});
    b.advance(400ms);
    b.disconnect(0);  // node 1 starts while node 0 is cut off: both become ready
    b.connect({1});
    b.advance(400ms);
    REQUIRE(b.nodes[0].ready());
    REQUIRE(b.nodes[1].ready());
    if (together) {  // both reconnect at once: the smaller nonce wins
      b.disconnect(1);
      b.connect({0, 1});
    } else {  // node 0 reconnects: the node that did not keeps serving
      b.connect({0});
    }
    b.advance(400ms);
    CHECK(b.ready_count() == 1);
    CHECK(b.nodes[together ? 0 : 1].ready());
    b.advance(10s);
    CHECK(b.ready_count() == 1);
  }
}

TEST_CASE("node probe: an answer after the window still makes a node a duplicate", "[node_probe]") {
  NodeIdProbe p(0xabc, NodeIdProbe::Options{300ms, 2000ms, 0ms});
  auto now = Clock::now();
  CHECK(p.on_connected(now) == "probe-s-0000000000000abc");
  p.tick(now + 301ms, true);
  REQUIRE(p.ready());
  CHECK_FALSE(p.on_inbox("here-0000000000000abd", now).lost);  // another prober's answer
  CHECK(p.ready());
  auto r = p.on_inbox("here-0000000000000abc", now + 400ms);
  CHECK(r.lost);
  CHECK(p.state() == NodeIdProbe::State::duplicate);
  CHECK(p.tick(now + 2399ms, true).empty());
  CHECK(p.tick(now + 2400ms, false).empty());  // not while disconnected
  CHECK(p.tick(now + 2400ms, true) == "probe-s-0000000000000abc");
  // Malformed tokens mean nothing.
  for (auto tok : {"probe-x-0000000000000001", "probe-r-1", "probe-r-000000000000000G", "here-", "heree-1", "p"})
    CHECK_FALSE(p.on_inbox(tok, now).conflict);
}

TEST_CASE("headers from the bus: values byte for byte, reserved keys lowercase and once", "[nats_bus]") {
  auto decode = [](std::string_view block) {
    std::string packed;
    from_nats_headers(block, packed);
    std::vector<std::pair<std::string, std::string>> kv;
    if (packed.empty()) return kv;
    busgate::proto::mp::Reader rd(packed);
    uint32_t n = 0;
    REQUIRE(rd.read_map(n));
    for (uint32_t i = 0; i < n; ++i) {
      std::string_view k, v;
      REQUIRE(rd.read_str(k));
      REQUIRE(rd.read_str(v));
      kv.emplace_back(k, v);
    }
    return kv;
  };
  using KV = std::vector<std::pair<std::string, std::string>>;
  CHECK(decode("NATS/1.0\r\nA: x\r\nB:y\r\nC:  two\r\nD: \ttab \t\r\nE: \r\nF:\r\nG: a: b\r\n\r\n") ==
        KV{{"A", "x"}, {"B", "y"}, {"C", " two"}, {"D", "\ttab \t"}, {"E", ""}, {"F", ""}, {"G", "a: b"}});
  CHECK(decode("NATS/1.0\r\nBusgate-Tenant: evil\r\nbusgate-tenant: demo\r\nBUSGATE-TENANT: x\r\n"
               "busgate-tenant: again\r\nbusgate-Trace: t\r\nbusgatex: ok\r\n\r\n") ==
        KV{{"busgate-tenant", "demo"}, {"busgatex", "ok"}});
  // What the gateway writes comes back as it was.
  std::string block;
  std::string packed;
  busgate::proto::mp::Writer w(packed);
  w.map_header(3);
  w.str("k");
  w.str("  padded\t ");
  w.str("busgate-tenant");
  w.str("demo");
  w.str("empty");
  w.str("");
  to_nats_headers(packed, block);
  CHECK(decode(block) == KV{{"k", "  padded\t "}, {"busgate-tenant", "demo"}, {"empty", ""}});
}
