#include <catch2/catch.hpp>

#include <atomic>
#include <map>
#include <thread>

#include "memory_bus.hpp"

using namespace busgate::gw;
using busgate::proto::Code;

namespace {
BusMessagePtr msg(const std::string& subject, const std::string& payload = "x") {
  return std::make_shared<const BusMessage>(subject, "", "", payload);
}
}  // namespace

TEST_CASE("trie matching with wildcards", "[bus]") {
  MemoryBus bus("n1");
  std::map<std::string, int> got;
  auto sub = [&](const std::string& s) { return bus.subscribe(s, "", [&got, s](const BusMessagePtr&) { got[s]++; }); };
  sub("a.b");
  sub("a.*");
  sub("a.>");
  sub(">");
  sub("*.b");
  const auto id = sub("x.y");
  bus.publish(msg("a.b"), false);
  CHECK(got == std::map<std::string, int>{{"a.b", 1}, {"a.*", 1}, {"a.>", 1}, {">", 1}, {"*.b", 1}});
  got.clear();
  bus.publish(msg("a.b.c"), false);
  CHECK(got == std::map<std::string, int>{{"a.>", 1}, {">", 1}});
  got.clear();
  bus.unsubscribe(id);
  bus.publish(msg("x.y"), false);
  CHECK(got == std::map<std::string, int>{{">", 1}});
  CHECK(bus.stats().subscriptions == 5);
}

TEST_CASE("fan-out shares one payload", "[bus]") {
  MemoryBus bus("n1");
  std::vector<const BusMessage*> seen;
  for (int i = 0; i < 5; ++i) bus.subscribe("f", "", [&](const BusMessagePtr& m) { seen.push_back(m.get()); });
  bus.publish(msg("f"), false);
  REQUIRE(seen.size() == 5);
  for (auto* p : seen) CHECK(p == seen[0]);
}

TEST_CASE("queue groups deliver each message to exactly one member", "[bus]") {
  MemoryBus bus("n1");
  std::array<std::atomic<int>, 4> counts{};
  for (int i = 0; i < 3; ++i) bus.subscribe("jobs.*", "workers", [&counts, i](const BusMessagePtr&) { counts[i]++; });
  bus.subscribe("jobs.>", "", [&counts](const BusMessagePtr&) { counts[3]++; });
  std::vector<std::thread> ths;
  for (int t = 0; t < 4; ++t)
    ths.emplace_back([&] {
      for (int k = 0; k < 300; ++k) bus.publish(msg("jobs.x"), false);
    });
  for (auto& th : ths) th.join();
  CHECK(counts[0] + counts[1] + counts[2] == 1200);
  CHECK(counts[3] == 1200);
  for (int i = 0; i < 3; ++i) CHECK(counts[i] > 0);
}

TEST_CASE("request/reply through the node inbox", "[bus]") {
  MemoryBus bus("n1");
  bus.subscribe("svc.echo", "", [&](const BusMessagePtr& m) {
    bus.publish(std::make_shared<const BusMessage>(m->reply_to, "", "", "re:" + std::string(m->payload)), false);
  });
  auto req = std::make_shared<BusMessage>("svc.echo", "", "", "hi");
  Code status = Code::internal_error;
  std::string answer;
  bus.request(req, [&](Code s, const BusMessagePtr& m) {
    status = s;
    if (m) answer = std::string(m->payload);
  });
  CHECK(status == Code::ok);
  CHECK(answer == "re:hi");
  CHECK(req->reply_to.starts_with("_INBOX.n1."));

  auto none = std::make_shared<BusMessage>("svc.nobody", "", "", "");
  bus.request(none, [&](Code s, const BusMessagePtr&) { status = s; });
  CHECK(status == Code::no_responders);
}

TEST_CASE("cancelled requests drop late replies", "[bus]") {
  MemoryBus bus("n1");
  std::string reply_to;
  bus.subscribe("svc.slow", "", [&](const BusMessagePtr& m) { reply_to = std::string(m->reply_to); });
  auto req = std::make_shared<BusMessage>("svc.slow", "", "", "");
  int calls = 0;
  const auto token = bus.request(req, [&](Code, const BusMessagePtr&) { calls++; });
  bus.cancel_request(token);
  bus.publish(std::make_shared<const BusMessage>(reply_to, "", "", ""), false);
  CHECK(calls == 0);
}

TEST_CASE("a subject's cached matches follow every subscribe and unsubscribe", "[bus]") {
  MemoryBus bus("n1");
  std::map<std::string, int> got;
  auto sub = [&](const std::string& name, const std::string& s) {
    return bus.subscribe(s, "", [&got, name](const BusMessagePtr&) { got[name]++; });
  };
  const auto a = sub("a", "hot.x");
  for (int i = 0; i < 3; ++i) bus.publish(msg("hot.x"), false);  // the match is cached now
  CHECK(got == std::map<std::string, int>{{"a", 3}});
  const auto b = sub("b", "hot.*");  // a new subscriber is seen by the next publish on this thread
  bus.publish(msg("hot.x"), false);
  CHECK(got == std::map<std::string, int>{{"a", 4}, {"b", 1}});
  bus.unsubscribe(a);  // and a removed one is not called again
  bus.publish(msg("hot.x"), false);
  CHECK(got == std::map<std::string, int>{{"a", 4}, {"b", 2}});
  // more hot subjects than cache slots: every publish still reaches its subscriber
  for (int i = 0; i < 20; ++i) sub("n" + std::to_string(i), "many." + std::to_string(i));
  for (int round = 0; round < 2; ++round)
    for (int i = 0; i < 20; ++i) bus.publish(msg("many." + std::to_string(i)), false);
  for (int i = 0; i < 20; ++i) CHECK(got["n" + std::to_string(i)] == 2);
  bus.unsubscribe(b);
  bus.publish(msg("hot.x"), false);
  CHECK(got["b"] == 2);
}
