#include <catch2/catch.hpp>

#include <atomic>
#include <boost/asio/ip/address.hpp>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "auth_throttle.hpp"

using namespace busgate::gw;
using namespace std::chrono_literals;
using Clock = AuthThrottle::Clock;

namespace {

std::string ipv4(uint32_t n) {
  return std::to_string(n >> 24) + "." + std::to_string((n >> 16) & 255) + "." + std::to_string((n >> 8) & 255) +
         "." + std::to_string(n & 255);
}

// What a transport's remote() says for a peer (tcp_transport.cpp, ws_transport.cpp).
std::string remote_of(const std::string& ip, unsigned short port) {
  return boost::asio::ip::make_address(ip).to_string() + ":" + std::to_string(port);
}

}  // namespace

TEST_CASE("address_of strips the port from a transport's remote string", "[auth_throttle]") {
  CHECK(address_of("127.0.0.1:52648") == "127.0.0.1");
  CHECK(address_of("[::1]:5000") == "::1");
  CHECK(address_of("[2001:db8::7]:443") == "2001:db8::7");
  CHECK(address_of("::1:5000") == "::1");
  CHECK(address_of("::ffff:10.1.2.3:80") == "::ffff:10.1.2.3");
  CHECK(address_of("fe80::1%eth0:5000") == "fe80::1%eth0");
  CHECK(address_of("?") == "?");
  CHECK(address_of("") == "");
  // As the transports format them.
  CHECK(address_of(remote_of("10.1.2.3", 51234)) == "10.1.2.3");
  CHECK(address_of(remote_of("::1", 5000)) == "::1");
  CHECK(address_of(remote_of("2001:db8:0:1::ab", 65535)) == "2001:db8:0:1::ab");
  CHECK(address_of(remote_of("::", 1)) == "::");
}

TEST_CASE("bucket keys: IPv4 by address, IPv6 by /64", "[auth_throttle]") {
  const auto k = AuthThrottle::key_of;
  CHECK(k("10.0.0.1") != k("10.0.0.2"));
  CHECK(k("10.0.0.1") == k("::ffff:10.0.0.1"));  // a dual-stack listener's spelling of IPv4
  CHECK(k("::ffff:10.0.0.1") != k("::ffff:10.0.0.2"));
  CHECK(k("2001:db8:1:2:aaaa::1") == k("2001:db8:1:2:bbbb:cccc:dddd:eeee"));
  CHECK(k("2001:db8:1:2::1") != k("2001:db8:1:3::1"));
  CHECK(k("fe80::1%eth0") == k("fe80::2"));
  CHECK(k("::1") != k("127.0.0.1"));
  CHECK(k("?") == k("?"));
  CHECK(k("?") != k("not an address"));
  CHECK(k("?") != k("::"));
}

TEST_CASE("a burst of failures, then one more each time a token is back", "[auth_throttle]") {
  AuthThrottle t(3, 2.0);  // 3 failures, then one every 0.5 s
  const auto t0 = Clock::now();
  const std::string a = "192.0.2.1";
  CHECK(t.allowed(a, t0));
  CHECK(t.retry_after_s(a, t0) == 0);
  CHECK(t.tracked() == 0);
  for (int i = 0; i < 3; ++i) {
    CHECK(t.allowed(a, t0));
    t.failed(a, t0);
  }
  CHECK_FALSE(t.allowed(a, t0));
  CHECK(t.tracked() == 1);
  CHECK(t.retry_after_s(a, t0) == Approx(0.5));
  CHECK(t.retry_after_s(a, t0 + 200ms) == Approx(0.3));
  CHECK_FALSE(t.allowed(a, t0 + 499ms));
  CHECK(t.allowed(a, t0 + 500ms));
  t.failed(a, t0 + 500ms);  // the token that came back is spent at once
  CHECK_FALSE(t.allowed(a, t0 + 500ms));
  CHECK_FALSE(t.allowed(a, t0 + 999ms));
  CHECK(t.allowed(a, t0 + 1000ms));
  // Refilled completely (1.5 s after the last failure): forgotten, and the whole burst is back.
  CHECK(t.allowed(a, t0 + 2000ms));
  CHECK(t.tracked() == 0);
  for (int i = 0; i < 3; ++i) {
    CHECK(t.allowed(a, t0 + 2000ms));
    t.failed(a, t0 + 2000ms);
  }
  CHECK_FALSE(t.allowed(a, t0 + 2000ms));
}

TEST_CASE("failures racing past allowed() are each paid for", "[auth_throttle]") {
  AuthThrottle t(2, 1.0);
  const auto t0 = Clock::now();
  for (int i = 0; i < 4; ++i) t.failed("192.0.2.9", t0);  // two more than the burst
  CHECK(t.retry_after_s("192.0.2.9", t0) == Approx(3.0));
  CHECK_FALSE(t.allowed("192.0.2.9", t0 + 2900ms));
  CHECK(t.allowed("192.0.2.9", t0 + 3000ms));
}

TEST_CASE("addresses have independent budgets", "[auth_throttle]") {
  AuthThrottle t(2, 1.0);
  const auto t0 = Clock::now();
  t.failed("198.51.100.7", t0);
  t.failed("198.51.100.7", t0);
  CHECK_FALSE(t.allowed("198.51.100.7", t0));
  CHECK_FALSE(t.allowed("::ffff:198.51.100.7", t0));
  CHECK(t.allowed("198.51.100.8", t0));
  CHECK(t.allowed("::1", t0));
  CHECK(t.retry_after_s("198.51.100.8", t0) == 0);

  // One IPv6 /64 is one budget; the next /64 is another.
  t.failed("2001:db8:5:6::1", t0);
  t.failed("2001:db8:5:6:ffff::2", t0);
  CHECK_FALSE(t.allowed("2001:db8:5:6:1234:5678:9abc:def0", t0));
  CHECK(t.allowed("2001:db8:5:7::1", t0));
  CHECK(t.tracked() == 2);
}

TEST_CASE("burst 0 or rate 0 turns the throttle off", "[auth_throttle]") {
  const auto t0 = Clock::now();
  for (auto [burst, rate] : {std::pair{0u, 1.0}, std::pair{5u, 0.0}, std::pair{0u, 0.0}}) {
    AuthThrottle t(burst, rate);
    for (int i = 0; i < 1000; ++i) t.failed("192.0.2.1", t0);
    CHECK(t.allowed("192.0.2.1", t0));
    CHECK(t.retry_after_s("192.0.2.1", t0) == 0);
    CHECK(t.tracked() == 0);
  }
}

TEST_CASE("reconfigure caps budgets, and turning the throttle off forgets every address", "[auth_throttle]") {
  AuthThrottle t(10, 1.0);
  const auto t0 = Clock::now();
  for (int i = 0; i < 4; ++i) t.failed("192.0.2.1", t0);  // 6 tokens left
  t.failed("192.0.2.2", t0);                             // 9 left
  CHECK(t.allowed("192.0.2.1", t0));
  t.reconfigure(3, 1.0, t0);  // both capped at 3
  for (int i = 0; i < 3; ++i) t.failed("192.0.2.1", t0);
  CHECK_FALSE(t.allowed("192.0.2.1", t0));
  CHECK(t.allowed("192.0.2.2", t0));
  t.reconfigure(0, 1.0, t0);
  CHECK(t.allowed("192.0.2.1", t0));
  CHECK(t.tracked() == 0);
  t.failed("192.0.2.1", t0);
  CHECK(t.tracked() == 0);
  t.reconfigure(1, 1.0, t0);  // on again, with nothing remembered
  CHECK(t.allowed("192.0.2.1", t0));
  t.failed("192.0.2.1", t0);
  CHECK_FALSE(t.allowed("192.0.2.1", t0));
}

TEST_CASE("a new rate applies to the tokens still missing", "[auth_throttle]") {
  AuthThrottle t(4, 1.0);
  const auto t0 = Clock::now();
  for (int i = 0; i < 4; ++i) t.failed("192.0.2.1", t0);  // empty: full again in 4 s
  t.reconfigure(4, 4.0, t0);                             // now full again in 1 s
  CHECK(t.retry_after_s("192.0.2.1", t0) == Approx(0.25));
  CHECK_FALSE(t.allowed("192.0.2.1", t0 + 249ms));
  CHECK(t.allowed("192.0.2.1", t0 + 250ms));
  CHECK(t.allowed("192.0.2.1", t0 + 1000ms));
  CHECK(t.tracked() == 0);
}

TEST_CASE("200k distinct addresses stay within the bound, and the throttled one is kept", "[auth_throttle]") {
  const size_t bound = 65536;
  AuthThrottle t(5, 0.1, bound);
  const auto t0 = Clock::now();
  const std::string target = "203.0.113.99";
  for (int i = 0; i < 5; ++i) t.failed(target, t0);
  REQUIRE_FALSE(t.allowed(target, t0));
  size_t most = 0;
  for (uint32_t i = 0; i < 200000; ++i) {
    t.failed(ipv4(0x0a000000u + i), t0 + std::chrono::microseconds(i));  // 10.x.y.z, one failure each
    if (i % 1000 == 0) most = std::max(most, t.tracked());
  }
  most = std::max(most, t.tracked());
  CHECK(most <= bound);
  CHECK(t.tracked() > bound / 2);
  // The flood evicted the addresses closest to being forgiven, never the one with no budget left.
  CHECK_FALSE(t.allowed(target, t0 + 1s));
  // The most recent of the flood are still throttled a little (4 tokens of 5).
  t.failed(ipv4(0x0a000000u + 199999), t0 + 1s);
  t.failed(ipv4(0x0a000000u + 199999), t0 + 1s);
  t.failed(ipv4(0x0a000000u + 199999), t0 + 1s);
  t.failed(ipv4(0x0a000000u + 199999), t0 + 1s);
  CHECK_FALSE(t.allowed(ipv4(0x0a000000u + 199999), t0 + 1s));
  // Two minutes later everyone's bucket is full again: the next sweep empties the map.
  t.failed("192.0.2.1", t0 + 120s);
  CHECK(t.tracked() == 1);
}

TEST_CASE("4 threads failing at once lose no failure", "[auth_throttle]") {
  constexpr int kThreads = 4, kEach = 20000;
  // No time passes (every call uses t0), so nothing refills: the tokens left count the failures.
  AuthThrottle t(kThreads * kEach + 3, 1.0);
  const auto t0 = Clock::now();
  const std::string shared = "192.0.2.50";
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int n = 0; n < kThreads; ++n) {
    threads.emplace_back([&, n] {
      for (int i = 0; i < kEach; ++i) {
        t.failed(shared, t0);
        if (i % 4 == 0) {  // a new /64 of this thread's: the map grows while the others use it
          const std::string own = "2001:db8:" + std::to_string(n) + ":" + std::to_string(i / 4) + "::1";
          t.failed(own, t0);
          if (i % 16 == 0 && t.retry_after_s(own, t0) != 0) wrong.fetch_add(1);  // Catch2 is one thread
        }
        if (i % 8 == 0) (void)t.allowed(shared, t0);
        if (i % 64 == 0) (void)t.tracked();
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(wrong == 0);
  CHECK(t.tracked() == 1 + kThreads * kEach / 4);
  // Exactly 3 tokens left: two more failures leave one, the third leaves none.
  t.failed(shared, t0);
  t.failed(shared, t0);
  CHECK(t.allowed(shared, t0));
  t.failed(shared, t0);
  CHECK_FALSE(t.allowed(shared, t0));
  CHECK(t.retry_after_s(shared, t0) == Approx(1.0));
}
