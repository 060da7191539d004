#include <catch2/catch.hpp>

#include <string>

#include "busgate/protocol/subject.hpp"

using namespace busgate::proto;

TEST_CASE("subject grammar", "[subject]") {
  CHECK(validate_subject("a", false) == Code::ok);
  CHECK(validate_subject("orders.eu.created", false) == Code::ok);
  CHECK(validate_subject("a.*.c", true) == Code::ok);
  CHECK(validate_subject("a.>", true) == Code::ok);
  CHECK(validate_subject(">", true) == Code::ok);
  CHECK(validate_subject("*", true) == Code::ok);
  CHECK(validate_subject("a.*.c", false) == Code::wildcard_not_allowed);
  CHECK(validate_subject("a.>", false) == Code::wildcard_not_allowed);
  CHECK(validate_subject("", true) == Code::invalid_subject);
  CHECK(validate_subject(".a", true) == Code::invalid_subject);
  CHECK(validate_subject("a.", true) == Code::invalid_subject);
  CHECK(validate_subject("a..b", true) == Code::invalid_subject);
  CHECK(validate_subject("a b", true) == Code::invalid_subject);
  CHECK(validate_subject("a\tb", true) == Code::invalid_subject);
  CHECK(validate_subject(std::string("a\0b", 3), true) == Code::invalid_subject);
  CHECK(validate_subject("a\x7f", true) == Code::invalid_subject);
  CHECK(validate_subject("a*", true) == Code::invalid_subject);
  CHECK(validate_subject(">b", true) == Code::invalid_subject);
  CHECK(validate_subject("a.>.b", true) == Code::invalid_subject);
  CHECK(validate_subject("a*", false) == Code::invalid_subject);  // grammar before wildcard rule
  CHECK(validate_subject(std::string(256, 'x'), false) == Code::ok);
  CHECK(validate_subject(std::string(257, 'x'), false) == Code::invalid_subject);
  CHECK(validate_subject("caf\xc3\xa9.ok", false) == Code::ok);  // UTF-8 tokens are allowed
  CHECK(is_reserved_subject("$SYS.x"));
  CHECK_FALSE(is_reserved_subject("a.$b"));
  CHECK(has_wildcard("a.*"));
  CHECK_FALSE(has_wildcard("a.b"));
}

TEST_CASE("wildcard matching follows NATS semantics", "[subject]") {
  CHECK(subject_matches("a.b", "a.b"));
  CHECK_FALSE(subject_matches("a.b", "a.c"));
  CHECK_FALSE(subject_matches("a.b", "a.b.c"));
  CHECK_FALSE(subject_matches("a.b.c", "a.b"));
  CHECK(subject_matches("a.*", "a.b"));
  CHECK_FALSE(subject_matches("a.*", "a.b.c"));
  CHECK_FALSE(subject_matches("a.*", "a"));
  CHECK(subject_matches("*.b", "a.b"));
  CHECK(subject_matches("a.>", "a.b"));
  CHECK(subject_matches("a.>", "a.b.c.d"));
  CHECK_FALSE(subject_matches("a.>", "a"));
  CHECK(subject_matches(">", "a"));
  CHECK(subject_matches(">", "a.b.c"));
  CHECK(subject_matches("*.*.>", "a.b.c"));
  CHECK_FALSE(subject_matches("*.*.>", "a.b"));
  CHECK(subject_matches("*", "a"));
  CHECK_FALSE(subject_matches("*", "a.b"));
  CHECK_FALSE(subject_matches("ab", "a"));
  CHECK_FALSE(subject_matches("a", "ab"));
}

TEST_CASE("queue and header grammar", "[subject]") {
  CHECK(validate_queue("workers") == Code::ok);
  CHECK(validate_queue("") == Code::invalid_queue);
  CHECK(validate_queue("a.b") == Code::invalid_queue);
  CHECK(validate_queue("a b") == Code::invalid_queue);
  CHECK(validate_queue("*") == Code::invalid_queue);
  CHECK(validate_queue(std::string(64, 'q')) == Code::ok);
  CHECK(validate_queue(std::string(65, 'q')) == Code::invalid_queue);

  CHECK(validate_header("Content-Type", "text/plain") == Code::ok);
  CHECK(validate_header("busgate-tenant", "x") == Code::reserved_header);
  CHECK(validate_header("BusGate-Tenant", "x") == Code::reserved_header);
  CHECK(validate_header("busgate", "x") == Code::ok);
  CHECK(validate_header("", "x") == Code::invalid_header);
  CHECK(validate_header("a:b", "x") == Code::invalid_header);
  CHECK(validate_header("a", "x\r\ny") == Code::invalid_header);
  CHECK(validate_header(std::string(65, 'k'), "") == Code::invalid_header);
  CHECK(validate_header("k", std::string(4097, 'v')) == Code::invalid_header);
}
