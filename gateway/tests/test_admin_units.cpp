#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <string>

#include "admin_refusals.hpp"
#include "admin_views.hpp"
#include "metrics.hpp"

using namespace busgate::gw;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

TEST_CASE("latency buckets run from 50 us up to max_request_ms", "[metrics]") {
  const auto d = latency_bounds_us(60000);  // the default timeouts.max_request_ms
  REQUIRE(d.front() == 50);
  CHECK(d.back() == 60000000);
  CHECK(std::find(d.begin(), d.end(), 30000000) != d.end());
  CHECK(std::is_sorted(d.begin(), d.end()));
  const auto odd = latency_bounds_us(45000);  // not on the ladder: the top bucket is exactly it
  CHECK(odd.back() == 45000000);
  CHECK(odd[odd.size() - 2] == 30000000);
  const auto small = latency_bounds_us(100);
  CHECK(small.back() == 100000);
  CHECK(small.size() == 11);  // 50 us ... 50 ms on the ladder, then 100 ms
  CHECK(latency_bounds_us(3600000).size() <= kMaxLatencyBuckets);
  CHECK(latency_bounds_us(3600000).back() == 3600000000ull);
}

TEST_CASE("a tenant's latency histogram counts each answer once in its bucket", "[metrics]") {
  TenantMetrics t;
  const auto bounds = latency_bounds_us(5000);
  t.observe_latency_us(bounds, 40);          // first bucket
  t.observe_latency_us(bounds, 5000000);     // exactly the top bound: still finite
  t.observe_latency_us(bounds, 5000001);     // +Inf
  CHECK(t.latency_buckets[0].load() == 1);
  CHECK(t.latency_buckets[bounds.size() - 1].load() == 1);
  CHECK(t.latency_buckets[bounds.size()].load() == 1);
  CHECK(t.latency_count.load() == 3);
}

TEST_CASE("refusals match by name within the tenant, by address, or by token, until they end", "[admin]") {
  RefusalList list("gw-1");
  const auto now = Clock::now();
  CHECK_FALSE(list.match("acme", "scorer", "10.0.0.1", "d1", now));
  Refusal by_name;
  by_name.id = list.next_id();
  by_name.by = Refusal::By::name;
  by_name.tenant = "acme";
  by_name.value = "scorer";
  by_name.until = now + 10s;
  list.add(by_name);
  CHECK(by_name.id == "gw-1.1");
  CHECK(list.match("acme", "scorer", "10.0.0.9", "dx", now));
  CHECK_FALSE(list.match("other", "scorer", "10.0.0.9", "dx", now));  // another tenant's program
  CHECK_FALSE(list.match("acme", "", "10.0.0.9", "dx", now));
  CHECK_FALSE(list.match("acme", "scorer", "10.0.0.9", "dx", now + 11s));  // over
  CHECK(list.live(now + 11s).empty());

  Refusal by_addr;
  by_addr.id = list.next_id();
  by_addr.by = Refusal::By::address;
  by_addr.value = "10.0.0.1";
  by_addr.until = now + 10s;
  list.add(by_addr);
  CHECK(list.match("any", "x", "10.0.0.1", "d", now)->id == "gw-1.2");
  Refusal by_token = by_addr;
  by_token.id = list.next_id();
  by_token.by = Refusal::By::token;
  by_token.tenant = "acme";
  by_token.value = "digest-1";
  list.add(by_token);
  CHECK(list.match("acme", "", "10.9.9.9", "digest-1", now));
  CHECK_FALSE(list.match("acme", "", "10.9.9.9", "digest-2", now));
  CHECK(list.live(now).size() == 2);
  CHECK(list.remove("gw-1.2"));
  CHECK_FALSE(list.remove("gw-1.2"));
  CHECK_FALSE(list.match("any", "x", "10.0.0.1", "d", now));
}

TEST_CASE("the close body takes refuse_for_ms and by, and nothing else", "[admin]") {
  CloseRequest r;
  CHECK(parse_close_body("", r).empty());
  CHECK(r.refuse_for_ms == 0);
  CHECK_FALSE(r.by);
  CHECK(parse_close_body(R"({"refuse_for_ms": 60000, "by": "address"})", r).empty());
  CHECK(r.refuse_for_ms == 60000);
  CHECK(r.by == Refusal::By::address);
  CloseRequest bad;
  CHECK_FALSE(parse_close_body(R"({"refuse_for_ms": -5})", bad).empty());
  CHECK_FALSE(parse_close_body(R"({"refuse_for_ms": 1.5})", bad).empty());
  CHECK_FALSE(parse_close_body(R"({"by": "session"})", bad).empty());
  CHECK_FALSE(parse_close_body(R"({"by": "ip"})", bad).empty());
  CHECK_FALSE(parse_close_body(R"({"refuse": 1})", bad).empty());
  CHECK_FALSE(parse_close_body("[1]", bad).empty());
  CHECK_FALSE(parse_close_body("{", bad).empty());
}
