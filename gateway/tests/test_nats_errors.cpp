// What the NATS server's -ERR says (nats_errors.hpp) and the link's subscription table
// (nats_subs.hpp).
#include <catch2/catch.hpp>

#include "nats_errors.hpp"
#include "nats_subs.hpp"

using namespace busgate::gw;
using Kind = NatsServerError::Kind;

TEST_CASE("nats errors: permission violations name their subject and queue", "[nats_errors]") {
  auto e = classify_nats_error(R"('Permissions Violation for Subscription to "t.demo.secret.>"')");
  CHECK(e.kind == Kind::subscribe_denied);
  CHECK(e.subject == "t.demo.secret.>");
  CHECK(e.queue.empty());

  e = classify_nats_error(R"('Permissions Violation for Subscription to "jobs.x" using queue "workers"')");
  CHECK(e.kind == Kind::subscribe_denied);
  CHECK(e.subject == "jobs.x");
  CHECK(e.queue == "workers");

  // Newer servers add a reason after the subject.
  e = classify_nats_error(R"('Permissions Violation for Subscription to "a.b.c", too many tokens')");
  CHECK(e.kind == Kind::subscribe_denied);
  CHECK(e.subject == "a.b.c");

  e = classify_nats_error(R"('Permissions Violation for Publish to "t.demo.no"')");
  CHECK(e.kind == Kind::publish_denied);
  CHECK(e.subject == "t.demo.no");
  e = classify_nats_error(R"('Permissions Violation for Publish with Reply of "_INBOX.x"')");
  CHECK(e.kind == Kind::publish_denied);
  CHECK(e.subject == "_INBOX.x");

  // Go's quoting: escaped quotes and backslashes.
  e = classify_nats_error(R"('Permissions Violation for Subscription to "a\"b\\c"')");
  CHECK(e.kind == Kind::subscribe_denied);
  CHECK(e.subject == "a\"b\\c");
  // Without the single quotes, and with odd case.
  e = classify_nats_error(R"(permissions violation for subscription to "x")");
  CHECK(e.kind == Kind::subscribe_denied);
  CHECK(e.subject == "x");
}

TEST_CASE("nats errors: anything else is just reported", "[nats_errors]") {
  for (const char* t : {"'Authorization Violation'", "'Stale Connection'", "'Maximum Payload Violation'",
                        "'Permissions Violation'", R"('Permissions Violation for Subscription to x')",
                        R"('Permissions Violation for Subscription to "unterminated')",
                        R"('Permissions Violation for Subscription to "x" using queue q')", "", "'", "''"}) {
    INFO(t);
    CHECK(classify_nats_error(t).kind == Kind::other);
  }
}

TEST_CASE("nats subscriptions: replayed in sid order, refused ones dropped", "[nats_subs]") {
  NatsSubscriptions subs;
  subs.add(7, "b.x", "");
  subs.add(3, "a.>", "");
  subs.add(9, "b.x", "workers");
  subs.add(12, "b.x", "");
  CHECK(subs.replay() == "SUB a.> 3\r\nSUB b.x 7\r\nSUB b.x workers 9\r\nSUB b.x 12\r\n");
  CHECK(subs.remove(3));
  CHECK_FALSE(subs.remove(3));
  // A refusal names subject and queue: every sid with both goes.
  CHECK(subs.take_refused("b.x", "") == std::vector<uint64_t>{7, 12});
  CHECK(subs.take_refused("b.x", "").empty());
  CHECK(subs.replay() == "SUB b.x workers 9\r\n");
  CHECK(subs.take_refused("b.x", "workers") == std::vector<uint64_t>{9});
  CHECK(subs.size() == 0);

  std::string out;
  nats_append_unsub(out, 42);
  nats_append_sub(out, "s", "q", 1);
  CHECK(out == "UNSUB 42\r\nSUB s q 1\r\n");
}
