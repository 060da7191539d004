#include "busgate/protocol/json.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <vector>

#include "busgate/protocol/frame.hpp"
#include "busgate/protocol/msgpack.hpp"

namespace busgate::proto {
namespace {

using ojson = nlohmann::ordered_json;
constexpr int kMaxJsonDepth = 32;

// Array index of the bin payload field for ops that carry one (op is index 0).
int payload_index(uint64_t op) {
  switch (static_cast<Op>(op)) {
    case Op::pub: return 2;
    case Op::msg:
    case Op::req:
    case Op::res: return 3;
    default: return -1;
  }
}

// Rejects nesting deeper than kMaxJsonDepth before the parser sees the text.
bool depth_ok(std::string_view text) {
  int depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') in_string = true;
    else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth) return false;
    } else if (c == ']' || c == '}') --depth;
  }
  return true;
}

bool write_json(mp::Writer& w, const ojson& j, bool as_payload, std::string& detail) {
  if (as_payload) {
    if (j.is_string()) {
      w.bin(j.get_ref<const std::string&>());
      return true;
    }
    if (j.is_object() && j.size() == 1 && j.contains("base64") && j["base64"].is_string()) {
      auto bytes = base64_decode(j["base64"].get_ref<const std::string&>());
      if (!bytes) {
        detail = "payload base64 is not valid standard base64";
        return false;
      }
      w.bin(*bytes);
      return true;
    }
    detail = "payload must be a string or {\"base64\": \"...\"}";
    return false;
  }
  switch (j.type()) {
    case ojson::value_t::null: w.nil(); return true;
    case ojson::value_t::boolean: w.boolean(j.get<bool>()); return true;
    case ojson::value_t::number_unsigned: w.uint(j.get<uint64_t>()); return true;
    case ojson::value_t::number_integer: w.sint(j.get<int64_t>()); return true;
    case ojson::value_t::number_float: w.float64(j.get<double>()); return true;
    case ojson::value_t::string: w.str(j.get_ref<const std::string&>()); return true;
    case ojson::value_t::array:
      w.array_header(static_cast<uint32_t>(j.size()));
      for (const auto& e : j)
        if (!write_json(w, e, false, detail)) return false;
      return true;
    case ojson::value_t::object:
      w.map_header(static_cast<uint32_t>(j.size()));
      for (auto it = j.begin(); it != j.end(); ++it) {
        w.str(it.key());
        if (!write_json(w, it.value(), false, detail)) return false;
      }
      return true;
    default: detail = "unsupported JSON value"; return false;
  }
}

ojson bin_to_json(std::string_view bytes, bool as_payload) {
  if (as_payload && is_valid_utf8(bytes)) return ojson(std::string(bytes));
  ojson o = ojson::object();
  o["base64"] = base64_encode(bytes);
  return o;
}

ojson value_to_json(const mp::Value& v, bool as_payload) {
  switch (v.type) {
    case mp::Type::nil: return nullptr;
    case mp::Type::boolean: return v.b;
    case mp::Type::uint: return v.u;
    case mp::Type::sint: return v.i;
    case mp::Type::float64: return v.d;
    case mp::Type::str: return std::string(v.s);
    case mp::Type::bin: return bin_to_json(v.s, as_payload);
    case mp::Type::array: {
      ojson a = ojson::array();
      for (const auto& e : v.array) a.push_back(value_to_json(e, false));
      return a;
    }
    case mp::Type::map: {
      ojson o = ojson::object();
      for (const auto& [k, e] : v.map) o[std::string(k)] = value_to_json(e, false);
      return o;
    }
    default: return nullptr;
  }
}

constexpr char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

}  // namespace

Code json_value_to_body(const ojson& frame, std::string& body, std::string* detail) {
  std::string why;
  auto fail = [&](std::string reason) {
    if (detail) *detail = std::move(reason);
    return Code::malformed_frame;
  };
  if (!frame.is_array() || frame.empty()) return fail("a JSON frame must be a non-empty array");
  if (!frame[0].is_number_unsigned() && !(frame[0].is_number_integer() && frame[0].get<int64_t>() >= 0))
    return fail("the op (element 0) must be a non-negative integer");
  const int pi = payload_index(frame[0].get<uint64_t>());
  mp::Writer w(body);
  w.array_header(static_cast<uint32_t>(frame.size()));
  for (size_t i = 0; i < frame.size(); ++i) {
    const bool as_payload = static_cast<int>(i) == pi && !frame[i].is_null();
    if (!write_json(w, frame[i], as_payload, why)) return fail(why);
  }
  return Code::ok;
}

Code json_to_body(std::string_view text, std::string& body, std::string* detail) {
  if (!depth_ok(text)) {
    if (detail) *detail = "JSON nested deeper than 32 levels";
    return Code::malformed_frame;
  }
  // Objects may not repeat a member name: the parser callback tracks the keys of each open object.
  std::vector<std::vector<std::string>> open_objects;
  bool duplicate = false;
  const ojson::parser_callback_t cb = [&](int /*depth*/, nlohmann::detail::parse_event_t ev, ojson& parsed) {
    using E = nlohmann::detail::parse_event_t;
    if (ev == E::object_start) open_objects.emplace_back();
    else if (ev == E::object_end && !open_objects.empty()) open_objects.pop_back();
    else if (ev == E::key && !open_objects.empty()) {
      auto& keys = open_objects.back();
      const auto& k = parsed.get_ref<const std::string&>();
      if (std::find(keys.begin(), keys.end(), k) != keys.end()) duplicate = true;
      keys.push_back(k);
    }
    return true;
  };
  ojson j = ojson::parse(text, cb, false);
  if (j.is_discarded()) {
    if (detail) *detail = "text frame is not valid JSON";
    return Code::malformed_frame;
  }
  if (duplicate) {
    if (detail) *detail = "a JSON object repeats a member name";
    return Code::malformed_frame;
  }
  return json_value_to_body(j, body, detail);
}

bool body_to_json(std::string_view body, ojson& out) {
  mp::Reader rd(body);
  mp::Value v;
  if (rd.peek() != mp::Type::array || !rd.read_value(v) || !rd.at_end() || v.array.empty()) return false;
  const int pi = v.array[0].type == mp::Type::uint ? payload_index(v.array[0].u) : -1;
  out = ojson::array();
  for (size_t i = 0; i < v.array.size(); ++i) out.push_back(value_to_json(v.array[i], static_cast<int>(i) == pi));
  return true;
}

std::optional<std::string> body_to_json_text(std::string_view body) {
  ojson j;
  if (!body_to_json(body, j)) return std::nullopt;
  return j.dump(-1, ' ', false, ojson::error_handler_t::replace);
}

std::string base64_encode(std::string_view in) {
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const uint32_t v = (uint32_t{static_cast<unsigned char>(in[i])} << 16) |
                       (uint32_t{static_cast<unsigned char>(in[i + 1])} << 8) | static_cast<unsigned char>(in[i + 2]);
    out += kB64[(v >> 18) & 63];
    out += kB64[(v >> 12) & 63];
    out += kB64[(v >> 6) & 63];
    out += kB64[v & 63];
  }
  if (i < in.size()) {
    uint32_t v = uint32_t{static_cast<unsigned char>(in[i])} << 16;
    if (i + 1 < in.size()) v |= uint32_t{static_cast<unsigned char>(in[i + 1])} << 8;
    out += kB64[(v >> 18) & 63];
    out += kB64[(v >> 12) & 63];
    out += i + 1 < in.size() ? kB64[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

std::optional<std::string> base64_decode(std::string_view in) {
  if (in.size() % 4 != 0) return std::nullopt;
  auto val = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  std::string out;
  out.reserve(in.size() / 4 * 3);
  for (size_t i = 0; i < in.size(); i += 4) {
    const bool last = i + 4 == in.size();
    int v[4];
    int pad = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = in[i + static_cast<size_t>(k)];
      if (c == '=' && last && k >= 2) {
        v[k] = 0;
        ++pad;
        continue;
      }
      if (pad > 0) return std::nullopt;  // data after padding
      v[k] = val(c);
      if (v[k] < 0) return std::nullopt;
    }
    const uint32_t x = (uint32_t(v[0]) << 18) | (uint32_t(v[1]) << 12) | (uint32_t(v[2]) << 6) | uint32_t(v[3]);
    out += static_cast<char>((x >> 16) & 0xff);
    if (pad < 2) out += static_cast<char>((x >> 8) & 0xff);
    if (pad < 1) out += static_cast<char>(x & 0xff);
  }
  return out;
}

}  // namespace busgate::proto
