// The units a connection is made of: reply grants, the request table, the handshake and the outbound queue.
#include <catch2/catch.hpp>

#include "handshake.hpp"
#include "outbound_queue.hpp"
#include "reply_grants.hpp"
#include "request_table.hpp"

using namespace busgate::gw;
using busgate::proto::Code;
namespace mp = busgate::proto::mp;

TEST_CASE("reply grants: own subjects shown as they are, inboxes granted once, others aliased", "[grants]") {
  ReplyGrants g;
  CHECK(g.map("", "t.acme.").empty());
  CHECK(g.map("t.acme.svc.reply", "t.acme.") == "svc.reply");  // the tenant's own: not a grant
  CHECK(g.size() == 0);
  CHECK(g.map("_INBOX.node1.42", "t.acme.") == "_INBOX.node1.42");
  const std::string alias = g.map("t.other.private", "t.acme.");
  CHECK(alias.starts_with("_INBOX.~"));
  CHECK(alias.size() == 8 + 22);
  CHECK(alias.find("other") == std::string::npos);  // another namespace is never shown
  CHECK(g.size() == 2);
  CHECK(g.take(alias) == "t.other.private");
  CHECK(g.take(alias).empty());  // one use
  CHECK(g.take("_INBOX.node1.42") == "_INBOX.node1.42");
  CHECK(g.take("_INBOX.never").empty());
}

TEST_CASE("reply grants: an alias never equals a request inbox or a subject shown as it is", "[grants]") {
  ReplyGrants g;
  // An own subject that reads as a request inbox once the namespace is stripped: aliased, so that it
  // cannot take the place of the real inbox `_INBOX.gw.5` of another request.
  const std::string own = g.map("t.acme._INBOX.gw.5", "t.acme.");
  CHECK(own.starts_with("_INBOX.~"));
  CHECK(g.map("_INBOX.gw.5", "t.acme.") == "_INBOX.gw.5");
  CHECK(g.take("_INBOX.gw.5") == "_INBOX.gw.5");
  CHECK(g.take(own) == "t.acme._INBOX.gw.5");
  // Names in the alias space, or with more tokens than a request inbox, are never shown as they are.
  CHECK(g.map("_INBOX.~abc.1", "t.acme.") != "_INBOX.~abc.1");
  CHECK(g.map("_INBOX.~abc", "t.acme.") != "_INBOX.~abc");
  CHECK(g.map("_INBOX.a.b.c", "t.acme.").starts_with("_INBOX.~"));
  // Aliases are random: two maps of one subject give two different one-use names.
  const auto a1 = g.map("t.other.x", "t.acme.");
  const auto a2 = g.map("t.other.x", "t.acme.");
  CHECK(a1 != a2);
}

TEST_CASE("reply grants: a stored publish's confirmation inbox is not shown", "[grants]") {
  ReplyGrants g;
  CHECK(g.map("_INBOX.node1.js.7", "t.acme.").empty());
  CHECK(g.size() == 0);
}

TEST_CASE("reply grants are bounded per origin tenant: the oldest of that tenant expire", "[grants]") {
  ReplyGrants g(3);
  CHECK(g.map("_INBOX.n.a", "t.x.", "acme") == "_INBOX.n.a");  // tenant acme's pending request
  for (int i = 0; i < 1000; ++i) g.map("_INBOX.n." + std::to_string(i), "t.x.", "mallory");
  CHECK(g.size() == 4);
  CHECK(g.take("_INBOX.n.a") == "_INBOX.n.a");  // another tenant's flood did not evict it
  CHECK(g.take("_INBOX.n.0").empty());
  CHECK(g.take("_INBOX.n.996").empty());
  CHECK(g.take("_INBOX.n.999") == "_INBOX.n.999");
  // Origins named by headers are bounded too: past the bound they share one.
  ReplyGrants h(2, 4);
  for (int i = 0; i < 100; ++i) h.map("_INBOX.n." + std::to_string(i), "t.x.", "forged-" + std::to_string(i));
  CHECK(h.size() <= 2 * 5);
}

TEST_CASE("reply grants: taking and granting again keeps the bound", "[grants]") {
  ReplyGrants g(2);
  for (int i = 0; i < 10000; ++i) {
    const auto v = g.map("t.o." + std::to_string(i), "t.x.", "acme");
    CHECK(g.take(v) == "t.o." + std::to_string(i));
  }
  CHECK(g.size() == 0);
  g.map("t.o.a", "t.x.", "acme");
  g.map("t.o.b", "t.x.", "acme");
  CHECK(g.size() == 2);
}

TEST_CASE("packed_header finds a header in a msgpack map", "[grants]") {
  std::string packed;
  busgate::proto::mp::Writer w(packed);
  w.map_header(2);
  w.str("k");
  w.str("v");
  w.str("busgate-tenant");
  w.str("acme");
  CHECK(packed_header(packed, "busgate-tenant") == "acme");
  CHECK(packed_header(packed, "k") == "v");
  CHECK(packed_header(packed, "none").empty());
  CHECK(packed_header("", "k").empty());
  CHECK(packed_header("\xc1", "k").empty());
}

TEST_CASE("request table: deadlines, the one timer and replies by token", "[requests]") {
  using Clock = RequestTable::Clock;
  RequestTable t;
  const auto t0 = Clock::now();
  auto& a = t.add(1, t0, 100);
  a.token = 11;
  CHECK(t.arm(a.deadline));  // first deadline arms the timer
  auto& b = t.add(2, t0, 50);
  b.token = 12;
  CHECK(t.arm(b.deadline));  // earlier: the timer moves
  auto& c = t.add(3, t0, 500);
  c.token = 13;
  CHECK_FALSE(t.arm(c.deadline));  // later: the timer stays
  CHECK(t.contains(2));
  CHECK(t.size() == 3);
  CHECK(t.find(1, 99) == nullptr);  // a reply for an older request with the same id
  REQUIRE(t.find(1, 11) != nullptr);

  Clock::time_point next;
  auto expired = t.expire(t0 + std::chrono::milliseconds(60), next);
  REQUIRE(expired.size() == 1);
  CHECK(expired[0].first == 2);
  CHECK(expired[0].second.timeout_ms == 50);
  CHECK(next == t0 + std::chrono::milliseconds(100));
  CHECK(t.arm(next));  // re-armed after firing
  CHECK(t.erase(1));
  CHECK_FALSE(t.erase(1));
  expired = t.expire(t0 + std::chrono::milliseconds(200), next);
  CHECK(expired.empty());  // the erased request is skipped
  CHECK(next == t0 + std::chrono::milliseconds(500));
  auto all = t.take_all();
  CHECK(all.size() == 1);
  CHECK(t.size() == 0);
}

namespace {
mp::Value str(std::string_view s) {
  mp::Value v;
  v.type = mp::Type::str;
  v.s = s;
  return v;
}
mp::Value u64(uint64_t u) {
  mp::Value v;
  v.type = mp::Type::uint;
  v.u = u;
  return v;
}
busgate::proto::Hello hello(std::string_view method = "token", bool with_token = true) {
  busgate::proto::Hello h;
  h.versions = {1};
  h.auth.type = mp::Type::map;
  h.auth.map.push_back({"method", str(method)});
  if (with_token) h.auth.map.push_back({"token", str("secret")});
  h.opts.type = mp::Type::map;
  return h;
}
}  // namespace

TEST_CASE("handshake: what a HELLO must hold", "[handshake]") {
  auto ok = check_hello(hello());
  CHECK(ok.code == Code::ok);
  CHECK(ok.token == "secret");
  auto h = hello();
  h.versions = {2, 3};
  CHECK(check_hello(h).code == Code::unsupported_version);
  CHECK(check_hello(hello("jwt")).code == Code::auth_method_unsupported);
  CHECK(check_hello(hello("jwt")).message.find("'jwt'") != std::string::npos);
  CHECK(check_hello(hello("token", false)).code == Code::auth_failed);
  h = hello();
  h.auth.map.clear();
  CHECK(check_hello(h).code == Code::auth_method_unsupported);
}

TEST_CASE("handshake: negotiated limits", "[handshake]") {
  HandshakeLimits l;
  l.tenant_max_payload = 1 << 20;
  l.heartbeat_ms = 30000;
  l.min_heartbeat_ms = 100;
  auto n = negotiate(hello(), l);
  CHECK(n.max_payload == 1u << 20);
  CHECK(n.max_frame == (1u << 20) + kFrameOverhead);
  CHECK(n.heartbeat_ms == 30000);

  // The bus's bound covers headers too: room is left for them.
  l.bus_max_message = 1 << 20;
  CHECK(negotiate(hello(), l).max_payload == (1u << 20) - kFrameOverhead);
  l.bus_max_message = 100000;  // small: half of it
  CHECK(negotiate(hello(), l).max_payload == 50000);
  l.bus_max_message = 0;

  auto h = hello();
  h.opts.map.push_back({"max_frame", u64(100000)});
  h.opts.map.push_back({"heartbeat_ms", u64(5)});
  n = negotiate(h, l);
  CHECK(n.max_frame == 100000);
  CHECK(n.heartbeat_ms == 100);  // clamped up to the minimum
  h = hello();
  h.opts.map.push_back({"max_frame", u64(10)});
  h.opts.map.push_back({"heartbeat_ms", u64(999999)});
  n = negotiate(h, l);
  CHECK(n.max_frame == busgate::proto::kPreHandshakeMaxFrame);  // never below the pre-handshake maximum
  CHECK(n.heartbeat_ms == 30000);
}

TEST_CASE("outbound queue: accounting, the warning once per burst, the bound", "[outbound]") {
  OutboundQueue q(1000);
  CHECK(q.admit(400) == OutboundQueue::Admit::ok);
  q.buf().append(400, 'a');
  CHECK(q.pending() == 400);
  CHECK(q.admit(200) == OutboundQueue::Admit::warn);  // past half: warned once
  q.buf().append(200, 'b');
  CHECK(q.past_half());
  CHECK(q.admit(100) == OutboundQueue::Admit::ok);
  CHECK(q.admit(401) == OutboundQueue::Admit::over);  // 600 + 401 > 1000
  CHECK(q.pending() == 600);                          // nothing was taken
  CHECK(q.mark_slow());
  CHECK_FALSE(q.mark_slow());  // the policy applies once

  // The writer takes the batch in slices; what is queued meanwhile waits for the next batch.
  auto s1 = q.next_slice(256);
  CHECK(s1.size() == 256);
  CHECK(q.writing());
  CHECK(q.next_slice(256).empty());  // one slice at a time
  q.buf().append(50, 'c');
  CHECK(q.pending() == 650);
  CHECK_FALSE(q.written());
  CHECK(q.pending() == 394);
  auto s2 = q.next_slice(256);
  CHECK(s2.size() == 256);
  CHECK_FALSE(q.written());
  auto s3 = q.next_slice(256);
  CHECK(s3.size() == 88);  // the rest of the first batch
  CHECK(s3.back() == 'b');
  CHECK_FALSE(q.written());  // 'c' still queued
  auto s4 = q.next_slice(0);
  CHECK(s4 == std::string(50, 'c'));
  CHECK(q.written());  // empty: the warning may come again
  CHECK(q.pending() == 0);
  CHECK(q.writes_done() == 4);
  CHECK(q.next_slice(256).empty());
  CHECK(q.admit(600) == OutboundQueue::Admit::warn);
}

TEST_CASE("outbound queue gives a burst's memory back once it is written", "[outbound]") {
  OutboundQueue q(64u << 20);
  q.buf().append(8u << 20, 'x');
  while (!q.next_slice(1u << 20).empty())
    if (q.written()) break;
  CHECK(q.pending() == 0);
  CHECK(q.buf().capacity() < (1u << 20));
}
