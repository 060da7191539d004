// libFuzzer target: arbitrary bytes through the NATS protocol parser, once whole and once in pieces
// whose sizes come from the input. Both must give the same messages and the same end, and every
// view a message holds must lie inside the bytes the parser said it consumed.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "nats_parser.hpp"

using busgate::gw::NatsItem;
using busgate::gw::NatsOp;
using busgate::gw::NatsParse;
using busgate::gw::NatsParser;

namespace {

void require(bool ok) {
  if (!ok) __builtin_trap();
}

bool inside(std::string_view part, std::string_view whole) {
  return part.empty() || (part.data() >= whole.data() && part.data() + part.size() <= whole.data() + whole.size());
}

struct Outcome {
  std::vector<std::string> items;
  std::string end;
  bool operator==(const Outcome&) const = default;
};

Outcome run(std::string_view input, int64_t max_payload, const uint8_t* cuts, size_t ncuts) {
  NatsParser p;
  p.set_max_payload(max_payload);
  Outcome o;
  std::string buf;
  size_t pos = 0, c = 0;
  while (pos < input.size()) {
    const size_t n = cuts ? std::min<size_t>(input.size() - pos, 1 + cuts[c++ % ncuts] % 64) : input.size();
    buf.append(input.substr(pos, n));
    pos += n;
    for (;;) {
      NatsItem m;
      const NatsParse r = p.next(buf, m);
      if (r == NatsParse::error) {
        require(!p.error().empty());
        o.end = "error: " + p.error();
        return o;
      }
      if (r == NatsParse::need_more) {
        require(p.needed() == 0 || p.needed() > buf.size());
        break;
      }
      require(p.consumed() > 0 && p.consumed() <= buf.size());
      const std::string_view used(buf.data(), p.consumed());
      require(inside(m.text, used) && inside(m.subject, used) && inside(m.reply, used) && inside(m.headers, used) &&
              inside(m.payload, used));
      if (m.op == NatsOp::msg || m.op == NatsOp::hmsg) {
        require(!m.subject.empty());
        require(m.headers.size() + m.payload.size() <= p.max_msg_size(m.op == NatsOp::hmsg));
        require(m.op == NatsOp::hmsg || m.headers.empty());
      }
      std::string d = std::to_string(static_cast<int>(m.op));
      for (std::string_view v : {m.text, m.subject, m.reply, m.headers, m.payload}) {
        d += '|';
        d += v;
      }
      d += '|' + std::to_string(m.sid);
      o.items.push_back(std::move(d));
      buf.erase(0, p.consumed());
    }
  }
  o.end = buf.empty() ? "complete" : "need_more";
  return o;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  // The first byte picks the server's max_payload: not known, or a power of two up to 8 MiB.
  const int64_t max_payload = data[0] % 4 == 0 ? 0 : int64_t{1} << (data[0] % 24);
  const std::string_view input(reinterpret_cast<const char*>(data + 1), size - 1);
  const Outcome whole = run(input, max_payload, nullptr, 0);
  const Outcome pieces = run(input, max_payload, data, size);
  require(whole == pieces);
  return 0;
}
