// Loads every conformance/vectors/*.json case and checks the C++ codec against it.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <set>
#include <nlohmann/json.hpp>

#include "busgate/protocol/codec.hpp"
#include "busgate/protocol/json.hpp"
#include "busgate/protocol/stream.hpp"
#include "helpers.hpp"

using namespace busgate::proto;
using ojson = nlohmann::ordered_json;

namespace {

std::vector<std::filesystem::path> vector_files() {
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(BUSGATE_VECTORS_DIR))
    if (e.path().extension() == ".json" && e.path().filename() != "schema.json") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  return files;
}

void check_case(const ojson& c) {
  const std::string id = c.at("id");
  INFO("vector " << id << ": " << c.at("description").get<std::string>());
  const std::string wire = from_hex(c.at("hex").get<std::string>());
  const Origin from = c.at("from") == "client" ? Origin::client : Origin::gateway;
  FrameParser parser(c.value("max_frame", kDefaultMaxFrame));
  parser.feed(wire);
  std::string_view body;
  const auto st = parser.next(body);
  REQUIRE(st != FrameParser::Status::need_more);
  Code code = parser.error();
  Frame frame;
  if (st == FrameParser::Status::frame) {
    CHECK(parser.buffered() == 0);
    auto r = decode(body, from, frame);
    INFO("decoder said: " << r.detail);
    code = r.code;
  }
  if (!c.at("valid").get<bool>()) {
    CHECK(std::string(code_name(code)) == c.at("error").get<std::string>());
    return;
  }
  REQUIRE(code == Code::ok);
  std::string typed;
  encode(frame, typed);
  ojson as_json;
  REQUIRE(body_to_json(typed, as_json));
  CHECK(as_json.dump() == c.at("decoded").dump());
  std::string from_json;
  REQUIRE(json_value_to_body(c.at("decoded"), from_json) == Code::ok);
  CHECK(to_hex(typed) == to_hex(from_json));
  if (c.value("canonical", true)) CHECK(to_hex(typed) == to_hex(body));
}

}  // namespace

TEST_CASE("conformance wire vectors", "[vectors]") {
  size_t cases = 0;
  for (const auto& path : vector_files()) {
    std::ifstream in(path);
    const ojson doc = ojson::parse(in);
    for (const auto& c : doc.at("cases")) {
      check_case(c);
      ++cases;
    }
  }
  INFO("vector cases found: " << cases);
  CHECK(cases >= 60);
}

TEST_CASE("every hex example in docs/protocol.md is a conformance vector", "[vectors][docs]") {
  std::set<std::string> known;
  for (const auto& path : vector_files()) {
    std::ifstream in(path);
    const ojson vectors = ojson::parse(in);
    for (const auto& c : vectors.at("cases")) known.insert(c.at("hex").get<std::string>());
  }
  std::ifstream doc(BUSGATE_DOCS_DIR "/protocol.md");
  REQUIRE(doc.good());
  std::string line;
  bool in_block = false;
  size_t examples = 0;
  while (std::getline(doc, line)) {
    if (line.starts_with("```")) {
      in_block = !in_block;
      continue;
    }
    const bool hex_line = in_block && line.size() >= 10 && line.find_first_not_of("0123456789abcdef") == std::string::npos;
    if (!hex_line) continue;
    ++examples;
    INFO("example: " << line);
    CHECK(known.count(line) == 1);
  }
  CHECK(examples >= 16);
}
