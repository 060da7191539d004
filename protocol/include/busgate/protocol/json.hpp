#pragma once
// The busgate.v1.json text mapping (docs/protocol.md "JSON mapping"): the same frames as JSON arrays,
// payloads as UTF-8 strings or {"base64": "..."}. Converts to and from msgpack bodies so that one
// decoder serves both modes.

#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json_fwd.hpp>

#include "busgate/protocol/errors.hpp"
#include "busgate/protocol/msgpack.hpp"  // is_valid_utf8

namespace busgate::proto {

// JSON text → msgpack body. MALFORMED_FRAME (with a reason in *detail) for text that is not a JSON
// array of the documented shape.
Code json_to_body(std::string_view text, std::string& body, std::string* detail = nullptr);
Code json_value_to_body(const nlohmann::ordered_json& frame, std::string& body, std::string* detail = nullptr);

// msgpack body → canonical JSON. Returns false for a body that is not valid msgpack.
bool body_to_json(std::string_view body, nlohmann::ordered_json& out);
std::optional<std::string> body_to_json_text(std::string_view body);

std::string base64_encode(std::string_view bytes);
std::optional<std::string> base64_decode(std::string_view text);

}  // namespace busgate::proto
