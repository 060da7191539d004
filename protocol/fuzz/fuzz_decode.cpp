// libFuzzer target: one body through the decoder; a decoded frame must re-encode and decode again.
#include <cstdint>
#include <cstdlib>

#include "busgate/protocol/codec.hpp"

using namespace busgate::proto;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  for (Origin from : {Origin::client, Origin::gateway}) {
    Frame f;
    auto r = decode(body, from, f);
    if (!r.has_frame) continue;
    std::string again;
    encode(f, again);
    Frame g;
    auto r2 = decode(again, from, g);
    if (!r2.has_frame || r2.code != r.code) abort();  // canonical re-encoding must decode the same way
    std::string third;
    encode(g, third);
    if (third != again) abort();
  }
  return 0;
}
