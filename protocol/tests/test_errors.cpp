#include <catch2/catch.hpp>

#include <algorithm>
#include <fstream>
#include <map>
#include <vector>
#include <set>
#include <sstream>

#include "busgate/protocol/errors.hpp"

using namespace busgate::proto;

TEST_CASE("error registry is sorted, unique and named", "[errors]") {
  std::set<uint16_t> numbers;
  std::set<std::string_view> names;
  uint16_t prev = 0;
  for (const auto& c : all_codes()) {
    const auto n = static_cast<uint16_t>(c.code);
    CHECK(n > prev);
    prev = n;
    CHECK(numbers.insert(n).second);
    CHECK(names.insert(c.name).second);
    CHECK(code_from_name(c.name) == c.code);
    CHECK(find_code(n) == &c);
  }
  CHECK(find_code(999) == nullptr);
  CHECK(is_fatal(Code::frame_too_large));
  CHECK_FALSE(is_fatal(Code::permission_denied));
  CHECK(code_name(Code::slow_consumer) == "SLOW_CONSUMER");
}

namespace {
std::string trim_cell(std::string c) {
  std::string out;
  for (char ch : c)
    if (ch != '`' && ch != '*') out += ch;
  const auto b = out.find_first_not_of(' ');
  const auto e = out.find_last_not_of(' ');
  return b == std::string::npos ? std::string{} : out.substr(b, e - b + 1);
}
}  // namespace

TEST_CASE("every registered code is in docs/protocol.md's registry with the same fatality", "[errors][docs]") {
  std::ifstream in(BUSGATE_DOCS_DIR "/protocol.md");
  REQUIRE(in.good());
  // Table rows: | code | NAME | closes? (yes/no) | ...
  std::map<std::string, std::vector<std::string>> rows;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] != '|') continue;
    std::vector<std::string> cells;
    std::stringstream ls(line.substr(1));
    std::string cell;
    while (std::getline(ls, cell, '|')) cells.push_back(trim_cell(cell));
    if (cells.size() >= 3) rows[cells[0] + " " + cells[1]] = cells;
  }
  for (const auto& c : all_codes()) {
    INFO(c.name);
    auto it = rows.find(std::to_string(static_cast<int>(c.code)) + " " + std::string(c.name));
    REQUIRE(it != rows.end());
    const auto& cells = it->second;
    const bool says_fatal = std::find(cells.begin(), cells.end(), "yes") != cells.end();
    const bool says_not = std::find(cells.begin(), cells.end(), "no") != cells.end();
    CHECK(says_fatal == c.fatal);
    CHECK(says_not == !c.fatal);
  }
}
