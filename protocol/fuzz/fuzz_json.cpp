// libFuzzer target: text frames through the JSON mapping and the decoder.
#include <cstdint>
#include <cstdlib>

#include "busgate/protocol/codec.hpp"
#include "busgate/protocol/json.hpp"

using namespace busgate::proto;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  std::string body;
  if (json_to_body(text, body) != Code::ok) return 0;
  Frame f;
  decode(body, Origin::client, f);
  if (auto back = body_to_json_text(body)) {
    std::string again;
    if (json_to_body(*back, again) != Code::ok) abort();
  }
  return 0;
}
