#include <catch2/catch.hpp>

#include <thread>

#include "tenancy.hpp"

using namespace busgate::gw;

TEST_CASE("pattern coverage and overlap", "[tenancy]") {
  CHECK(pattern_covers(">", "a.b"));
  CHECK(pattern_covers(">", "a.>"));
  CHECK(pattern_covers("a.>", "a.b.*"));
  CHECK(pattern_covers("a.*", "a.b"));
  CHECK(pattern_covers("a.*", "a.*"));
  CHECK_FALSE(pattern_covers("a.*", "a.>"));
  CHECK_FALSE(pattern_covers("a.b", "a.*"));
  CHECK_FALSE(pattern_covers("a.>", "a"));
  CHECK_FALSE(pattern_covers("a.>", ">"));
  CHECK(patterns_overlap("a.>", ">"));
  CHECK(patterns_overlap("a.*", "*.b"));
  CHECK_FALSE(patterns_overlap("a.*", "b.*"));
  CHECK_FALSE(patterns_overlap("a.*", "a.b.c"));
}

TEST_CASE("permissions: allow and deny", "[tenancy]") {
  PatternRules r;
  r.allow = {"orders.>", "metrics.*"};
  r.deny = {"orders.secret.>"};
  CHECK(subject_allowed(r, "orders.eu.new"));
  CHECK(subject_allowed(r, "metrics.cpu"));
  CHECK_FALSE(subject_allowed(r, "metrics.cpu.total"));
  CHECK_FALSE(subject_allowed(r, "orders.secret.x"));
  CHECK_FALSE(subject_allowed(r, "billing.x"));

  auto c = subscription_allowed(r, "orders.>");
  CHECK(c.allowed);
  CHECK(c.needs_filter);  // delivery filters orders.secret.>
  c = subscription_allowed(r, "orders.eu.*");
  CHECK(c.allowed);
  CHECK_FALSE(c.needs_filter);
  CHECK_FALSE(subscription_allowed(r, "orders.secret.>").allowed);
  CHECK_FALSE(subscription_allowed(r, ">").allowed);
  CHECK_FALSE(subscription_allowed(r, "metrics.>").allowed);
}

TEST_CASE("subject mapping keeps tenants in their namespace", "[tenancy]") {
  TenantConfig t;
  t.name = "acme";
  t.prefix = "t.acme.";
  t.imports.push_back({Import::Kind::service, "data.>", "svc.data.>"});
  t.imports.push_back({Import::Kind::service, "time.now", "svc.clock.now"});
  t.imports.push_back({Import::Kind::stream, "feeds.>", "shared.feeds.>"});

  CHECK(map_outbound(t, "orders.new").bus_subject == "t.acme.orders.new");
  CHECK(map_outbound(t, "data.users.get").bus_subject == "svc.data.users.get");
  CHECK(map_outbound(t, "time.now").bus_subject == "svc.clock.now");
  CHECK(map_outbound(t, "time.now.x").bus_subject == "t.acme.time.now.x");
  CHECK(map_outbound(t, "data").bus_subject == "t.acme.data");
  // '>' stays inside the namespace
  auto m = map_subscription(t, ">");
  CHECK(m.bus_subject == "t.acme.>");
  CHECK(*map_back(m, "t.acme.x.y") == "x.y");
  CHECK_FALSE(map_back(m, "t.other.x"));
  auto f = map_subscription(t, "feeds.*");
  CHECK(f.bus_subject == "shared.feeds.*");
  CHECK(*map_back(f, "shared.feeds.prices") == "feeds.prices");
  // service imports do not apply to subscriptions
  CHECK(map_subscription(t, "data.>").bus_subject == "t.acme.data.>");
}

TEST_CASE("token bucket", "[tenancy]") {
  TokenBucket b;
  b.configure(10);
  const auto t0 = std::chrono::steady_clock::now();
  int taken = 0;
  for (int i = 0; i < 20; ++i) taken += b.take(1, t0);
  CHECK(taken == 10);  // burst of one second
  CHECK(b.take(1, t0 + std::chrono::milliseconds(150)));
  CHECK_FALSE(b.take(1, t0 + std::chrono::milliseconds(150)));
  TokenBucket unlimited;
  unlimited.configure(0);
  for (int i = 0; i < 1000; ++i) CHECK(unlimited.take(1e6, t0));
}

TEST_CASE("tenant limits and authentication", "[tenancy]") {
  TenantRegistry reg;
  TenantConfig a;
  a.name = "a";
  a.prefix = "t.a.";
  a.token_sha256 = {sha256_hex("token-a-123")};
  a.limits.max_connections = 2;
  a.limits.max_inflight_requests = 3;
  reg.load({a});
  CHECK_FALSE(reg.authenticate("wrong-token"));
  auto r = reg.authenticate("token-a-123");
  REQUIRE(r);
  auto& t = *r->tenant;
  CHECK(t.try_acquire_connection());
  CHECK(t.try_acquire_connection());
  CHECK_FALSE(t.try_acquire_connection());
  t.release_connection();
  CHECK(t.try_acquire_connection());
  // the in-flight cap holds under concurrency
  std::atomic<int> got{0};
  std::vector<std::thread> ths;
  for (int i = 0; i < 8; ++i)
    ths.emplace_back([&] {
      for (int k = 0; k < 100; ++k)
        if (t.try_acquire_request()) got++;
    });
  for (auto& th : ths) th.join();
  CHECK(got == 3);
  // reload: token revoked
  a.token_sha256 = {sha256_hex("token-a-456")};
  reg.load({a});
  CHECK_FALSE(reg.still_valid(t, r->digest));
  CHECK(reg.authenticate("token-a-456"));
  reg.load({});
  CHECK(t.removed());
  CHECK_FALSE(reg.authenticate("token-a-456"));
}
