// libFuzzer target: arbitrary bytes through the stream parser and the decoder, both directions.
#include <cstdint>
#include <cstring>

#include "busgate/protocol/codec.hpp"
#include "busgate/protocol/stream.hpp"

using namespace busgate::proto;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FrameParser parser(4096);
  size_t pos = 0;
  while (pos < size) {
    // chunk sizes come from the input itself so the fuzzer explores split points
    const size_t n = std::min<size_t>(size - pos, 1 + data[pos] % 64);
    char* p = parser.prepare(n);
    std::memcpy(p, data + pos, n);
    parser.commit(n);
    pos += n;
    std::string_view body;
    FrameParser::Status st;
    while ((st = parser.next(body)) == FrameParser::Status::frame) {
      Frame f;
      auto r = decode(body, Origin::client, f);
      if (r.has_frame) {
        std::string again;
        encode(f, again);
      }
      decode(body, Origin::gateway, f);
    }
    if (st == FrameParser::Status::error) break;
  }
  return 0;
}
