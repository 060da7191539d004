#include <catch2/catch.hpp>

#include <boost/asio/error.hpp>
#include <cerrno>
#include <string>

#include "accept_backoff.hpp"

using namespace busgate::gw;
using namespace std::chrono_literals;
using Clock = AcceptBackoff::Clock;

namespace {

boost::system::error_code sys(int e) { return {e, boost::system::system_category()}; }

uint64_t count_of(const std::string& listener, const std::string& reason) {
  for (const auto& c : accept_error_counts())
    if (c.listener == listener && c.reason == reason) return c.count;
  return 0;
}

}  // namespace

TEST_CASE("accept errors are classified by what waiting would change", "[accept_backoff]") {
  CHECK(classify_accept_error(sys(EMFILE)) == AcceptError::descriptors);
  CHECK(classify_accept_error(boost::asio::error::no_descriptors) == AcceptError::descriptors);
  CHECK(classify_accept_error(sys(ENFILE)) == AcceptError::descriptors);
  CHECK(classify_accept_error(sys(ENOBUFS)) == AcceptError::memory);
  CHECK(classify_accept_error(boost::asio::error::no_memory) == AcceptError::memory);
  CHECK(classify_accept_error(boost::asio::error::connection_aborted) == AcceptError::connection);
  CHECK(classify_accept_error(sys(EPROTO)) == AcceptError::connection);
  CHECK(classify_accept_error(sys(EINVAL)) == AcceptError::other);
  CHECK(classify_accept_error(boost::asio::error::eof) == AcceptError::other);
}

TEST_CASE("running out of descriptors backs off 10 ms, doubling to 1 s, reset by an accept", "[accept_backoff]") {
  AcceptBackoff b("unit-waits");
  auto t = Clock::now();
  const std::chrono::milliseconds expected[] = {10ms, 20ms, 40ms, 80ms, 160ms, 320ms, 640ms, 1000ms, 1000ms, 1000ms};
  for (const auto want : expected) {
    const auto step = b.failed(sys(EMFILE), t);
    CHECK(step.wait == want);
    t += step.wait;
  }
  CHECK(b.paused());
  b.accepted(t);
  CHECK_FALSE(b.paused());
  CHECK(b.failed(sys(EMFILE), t).wait == 10ms);
  CHECK(count_of("unit-waits", "descriptors") == 11);
  CHECK(count_of("unit-waits", "connection") == 0);
}

TEST_CASE("an aborted connection is retried at once and does not reset the backoff", "[accept_backoff]") {
  AcceptBackoff b("unit-aborted");
  auto t = Clock::now();
  CHECK(b.failed(boost::asio::error::connection_aborted, t).wait == 0ms);
  CHECK_FALSE(b.paused());
  CHECK(b.failed(sys(ENOBUFS), t).wait == 10ms);
  CHECK(b.failed(boost::asio::error::connection_aborted, t).wait == 0ms);
  CHECK(b.failed(sys(ENOMEM), t).wait == 20ms);
  CHECK(b.failed(sys(EINVAL), t).wait == 40ms);  // unknown errors wait too
  CHECK(count_of("unit-aborted", "connection") == 2);
  CHECK(count_of("unit-aborted", "memory") == 2);
  CHECK(count_of("unit-aborted", "other") == 1);
}

TEST_CASE("at most one log line a second, with the limit and the failures it covers", "[accept_backoff]") {
  AcceptBackoff b("tcp-unit");
  const auto t0 = Clock::now();
  auto first = b.failed(sys(EMFILE), t0);
  CHECK_THAT(first.warn, Catch::Matches("accept paused on the tcp-unit listener: too many open files \\(limit \\d+ "
                                        "descriptors\\); see docs/operations.md, 'File descriptors'"));
  // A thousand failures in the next 999 ms: no line.
  for (int i = 1; i < 1000; ++i) CHECK(b.failed(sys(EMFILE), t0 + std::chrono::milliseconds(i)).warn.empty());
  const auto next = b.failed(sys(EMFILE), t0 + 1000ms);
  CHECK_THAT(next.warn, Catch::Contains("(limit ") && Catch::Contains("descriptors; 1000 failures in 1.0 s)"));
  // Accepting again right after a line: the "resumed" line is held back until a second has passed.
  auto resumed = b.accepted(t0 + 1200ms);
  CHECK(resumed.info.empty());
  REQUIRE(resumed.flush_at);
  CHECK(*resumed.flush_at == t0 + 2000ms);
  CHECK(b.flush(t0 + 1500ms).info.empty());
  const auto flushed = b.flush(t0 + 2000ms);
  CHECK(flushed.info == "accept resumed on the tcp-unit listener after 1001 failures in 1.2 s");
  CHECK(b.flush(t0 + 3000ms).info.empty());  // once
}

TEST_CASE("a failure before the held-back line continues the same pause", "[accept_backoff]") {
  AcceptBackoff b("tcp-unit-2");
  const auto t0 = Clock::now();
  CHECK_FALSE(b.failed(sys(EMFILE), t0).warn.empty());
  CHECK(b.accepted(t0 + 100ms).flush_at);
  CHECK(b.failed(sys(EMFILE), t0 + 200ms).warn.empty());
  CHECK(b.flush(t0 + 1000ms).info.empty());  // paused again: nothing to say yet
  const auto back = b.accepted(t0 + 1500ms);
  CHECK(back.info == "accept resumed on the tcp-unit-2 listener after 2 failures in 1.5 s");
}

TEST_CASE("the system's file table and socket memory are named", "[accept_backoff]") {
  AcceptBackoff b("https-unit");
  const auto t0 = Clock::now();
  CHECK_THAT(b.failed(sys(ENFILE), t0).warn,
             Catch::StartsWith("accept paused on the https-unit listener: the system's open-file table is full "
                               "(fs.file-max; process limit "));
  CHECK(b.failed(sys(ENOBUFS), t0 + 1s).warn ==
        "accept paused on the https-unit listener: out of memory for sockets (" + sys(ENOBUFS).message() + ")");
  CHECK(b.failed(boost::asio::error::connection_aborted, t0 + 1500ms).warn.empty());
  CHECK(b.failed(boost::asio::error::connection_aborted, t0 + 2s).warn ==
        "accept failed on the https-unit listener: " + boost::asio::error::make_error_code(
            boost::asio::error::connection_aborted).message() + " (2 failures in 0.5 s)");
}
