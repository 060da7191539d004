#include "busgate/protocol/msgpack.hpp"

#include <bit>
#include <cstring>

namespace busgate::proto {

bool is_valid_utf8(std::string_view s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    // ASCII, the common case, eight bytes at a time
    if (i + 8 <= n) {
      uint64_t w;
      std::memcpy(&w, s.data() + i, 8);
      if ((w & 0x8080808080808080ull) == 0) {
        i += 8;
        continue;
      }
    }
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len = 0;
    uint32_t cp = 0;
    if ((c & 0xe0) == 0xc0) {
      len = 2;
      cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3;
      cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > n) return false;
    for (size_t k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10ffff ||
        (cp >= 0xd800 && cp <= 0xdfff))
      return false;
    i += len;
  }
  return true;
}

}  // namespace busgate::proto

namespace busgate::proto::mp {

void Writer::be(uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) out_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

void Writer::uint(uint64_t v) {
  if (v < 0x80) {
    out_.push_back(static_cast<char>(v));
  } else if (v <= 0xff) {
    out_.push_back(static_cast<char>(0xcc));
    be(v, 1);
  } else if (v <= 0xffff) {
    out_.push_back(static_cast<char>(0xcd));
    be(v, 2);
  } else if (v <= 0xffffffffULL) {
    out_.push_back(static_cast<char>(0xce));
    be(v, 4);
  } else {
    out_.push_back(static_cast<char>(0xcf));
    be(v, 8);
  }
}

void Writer::sint(int64_t v) {
  if (v >= 0) return uint(static_cast<uint64_t>(v));
  if (v >= -32) {
    out_.push_back(static_cast<char>(static_cast<int8_t>(v)));
  } else if (v >= INT8_MIN) {
    out_.push_back(static_cast<char>(0xd0));
    be(static_cast<uint8_t>(v), 1);
  } else if (v >= INT16_MIN) {
    out_.push_back(static_cast<char>(0xd1));
    be(static_cast<uint16_t>(v), 2);
  } else if (v >= INT32_MIN) {
    out_.push_back(static_cast<char>(0xd2));
    be(static_cast<uint32_t>(v), 4);
  } else {
    out_.push_back(static_cast<char>(0xd3));
    be(static_cast<uint64_t>(v), 8);
  }
}

void Writer::float64(double v) {
  out_.push_back(static_cast<char>(0xcb));
  be(std::bit_cast<uint64_t>(v), 8);
}

void Writer::str(std::string_view s) {
  const size_t n = s.size();
  if (n < 32) {
    out_.push_back(static_cast<char>(0xa0 | n));
  } else if (n <= 0xff) {
    out_.push_back(static_cast<char>(0xd9));
    be(n, 1);
  } else if (n <= 0xffff) {
    out_.push_back(static_cast<char>(0xda));
    be(n, 2);
  } else {
    out_.push_back(static_cast<char>(0xdb));
    be(n, 4);
  }
  out_.append(s);
}

void Writer::bin(std::string_view b) {
  const size_t n = b.size();
  if (n <= 0xff) {
    out_.push_back(static_cast<char>(0xc4));
    be(n, 1);
  } else if (n <= 0xffff) {
    out_.push_back(static_cast<char>(0xc5));
    be(n, 2);
  } else {
    out_.push_back(static_cast<char>(0xc6));
    be(n, 4);
  }
  out_.append(b);
}

void Writer::array_header(uint32_t n) {
  if (n < 16) {
    out_.push_back(static_cast<char>(0x90 | n));
  } else if (n <= 0xffff) {
    out_.push_back(static_cast<char>(0xdc));
    be(n, 2);
  } else {
    out_.push_back(static_cast<char>(0xdd));
    be(n, 4);
  }
}

void Writer::map_header(uint32_t n) {
  if (n < 16) {
    out_.push_back(static_cast<char>(0x80 | n));
  } else if (n <= 0xffff) {
    out_.push_back(static_cast<char>(0xde));
    be(n, 2);
  } else {
    out_.push_back(static_cast<char>(0xdf));
    be(n, 4);
  }
}

void write_value(Writer& w, const Value& v) {
  switch (v.type) {
    case Type::nil: w.nil(); break;
    case Type::boolean: w.boolean(v.b); break;
    case Type::uint: w.uint(v.u); break;
    case Type::sint: w.sint(v.i); break;
    case Type::float64: w.float64(v.d); break;
    case Type::str: w.str(v.s); break;
    case Type::bin: w.bin(v.s); break;
    case Type::array:
      w.array_header(static_cast<uint32_t>(v.array.size()));
      for (const auto& e : v.array) write_value(w, e);
      break;
    case Type::map:
      w.map_header(static_cast<uint32_t>(v.map.size()));
      for (const auto& [k, e] : v.map) {
        w.str(k);
        write_value(w, e);
      }
      break;
    default: w.nil(); break;  // ext and invalid never come out of Reader::read_value
  }
}

const Value* Value::get(std::string_view key) const {
  if (type != Type::map) return nullptr;
  for (const auto& [k, v] : map)
    if (k == key) return &v;
  return nullptr;
}

Type Reader::peek() const {
  if (p_ == end_) return Type::end;
  const auto c = static_cast<uint8_t>(*p_);
  if (c <= 0x7f) return Type::uint;
  if (c <= 0x8f) return Type::map;
  if (c <= 0x9f) return Type::array;
  if (c <= 0xbf) return Type::str;
  if (c >= 0xe0) return Type::sint;
  switch (c) {
    case 0xc0: return Type::nil;
    case 0xc2:
    case 0xc3: return Type::boolean;
    case 0xc4:
    case 0xc5:
    case 0xc6: return Type::bin;
    case 0xc7:
    case 0xc8:
    case 0xc9:
    case 0xd4:
    case 0xd5:
    case 0xd6:
    case 0xd7:
    case 0xd8: return Type::ext;
    case 0xca:
    case 0xcb: return Type::float64;
    case 0xcc:
    case 0xcd:
    case 0xce:
    case 0xcf: return Type::uint;
    case 0xd0:
    case 0xd1:
    case 0xd2:
    case 0xd3: return Type::sint;
    case 0xd9:
    case 0xda:
    case 0xdb: return Type::str;
    case 0xdc:
    case 0xdd: return Type::array;
    case 0xde:
    case 0xdf: return Type::map;
    default: return Type::invalid;  // 0xc1
  }
}

bool Reader::take(size_t n, const char*& out) {
  if (static_cast<size_t>(end_ - p_) < n) return fail();
  out = p_;
  p_ += n;
  return true;
}

uint64_t Reader::be(const char* p, int n) const {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

bool Reader::read_nil() {
  if (peek() != Type::nil) return fail();
  ++p_;
  return true;
}

bool Reader::read_bool(bool& v) {
  if (peek() != Type::boolean) return fail();
  v = static_cast<uint8_t>(*p_++) == 0xc3;
  return true;
}

bool Reader::read_uint(uint64_t& v) {
  const Type t = peek();
  if (t != Type::uint && t != Type::sint) return fail();
  const auto c = static_cast<uint8_t>(*p_);
  const char* d = nullptr;
  if (c <= 0x7f) {
    v = c;
    ++p_;
    return true;
  }
  if (c >= 0xe0) return fail();  // negative fixint
  ++p_;
  int n = 0;
  bool is_signed = false;
  switch (c) {
    case 0xcc: n = 1; break;
    case 0xcd: n = 2; break;
    case 0xce: n = 4; break;
    case 0xcf: n = 8; break;
    case 0xd0: n = 1; is_signed = true; break;
    case 0xd1: n = 2; is_signed = true; break;
    case 0xd2: n = 4; is_signed = true; break;
    case 0xd3: n = 8; is_signed = true; break;
    default: return fail();
  }
  if (!take(static_cast<size_t>(n), d)) return false;
  uint64_t raw = be(d, n);
  if (is_signed) {
    // sign bit of the n-byte value: a negative number is not a uint
    if (raw & (uint64_t{1} << (8 * n - 1))) return fail();
  }
  v = raw;
  return true;
}

bool Reader::read_str(std::string_view& v) {
  if (peek() != Type::str) return fail();
  const auto c = static_cast<uint8_t>(*p_++);
  size_t n = 0;
  const char* d = nullptr;
  if (c >= 0xa0 && c <= 0xbf) {
    n = c & 0x1f;
  } else {
    const int w = c == 0xd9 ? 1 : c == 0xda ? 2 : 4;
    if (!take(static_cast<size_t>(w), d)) return false;
    n = be(d, w);
  }
  if (!take(n, d)) return false;
  v = {d, n};
  if (!is_valid_utf8(v)) return fail();
  return true;
}

bool Reader::read_bin(std::string_view& v) {
  if (peek() != Type::bin) return fail();
  const auto c = static_cast<uint8_t>(*p_++);
  const int w = c == 0xc4 ? 1 : c == 0xc5 ? 2 : 4;
  const char* d = nullptr;
  if (!take(static_cast<size_t>(w), d)) return false;
  const size_t n = be(d, w);
  if (!take(n, d)) return false;
  v = {d, n};
  return true;
}

bool Reader::read_array(uint32_t& n) {
  if (peek() != Type::array) return fail();
  const auto c = static_cast<uint8_t>(*p_++);
  const char* d = nullptr;
  if (c <= 0x9f) {
    n = c & 0x0f;
  } else {
    const int w = c == 0xdc ? 2 : 4;
    if (!take(static_cast<size_t>(w), d)) return false;
    n = static_cast<uint32_t>(be(d, w));
  }
  if (n > remaining()) return fail();  // every element takes at least one byte
  return true;
}

bool Reader::read_map(uint32_t& n) {
  if (peek() != Type::map) return fail();
  const auto c = static_cast<uint8_t>(*p_++);
  const char* d = nullptr;
  if (c <= 0x8f) {
    n = c & 0x0f;
  } else {
    const int w = c == 0xde ? 2 : 4;
    if (!take(static_cast<size_t>(w), d)) return false;
    n = static_cast<uint32_t>(be(d, w));
  }
  if (n > remaining() / 2) return fail();  // every entry takes at least two bytes
  return true;
}

bool Reader::read_value(Value& v, int depth) {
  if (depth > kMaxDepth) return fail();
  v = Value{};
  switch (peek()) {
    case Type::nil: v.type = Type::nil; return read_nil();
    case Type::boolean: v.type = Type::boolean; return read_bool(v.b);
    case Type::uint: v.type = Type::uint; return read_uint(v.u);
    case Type::sint: {
      const auto c = static_cast<uint8_t>(*p_);
      if (c >= 0xe0) {
        v.type = Type::sint;
        v.i = static_cast<int8_t>(c);
        ++p_;
        return true;
      }
      const int n = c == 0xd0 ? 1 : c == 0xd1 ? 2 : c == 0xd2 ? 4 : 8;
      const char* d = nullptr;
      ++p_;
      if (!take(static_cast<size_t>(n), d)) return false;
      const uint64_t raw = be(d, n);
      int64_t x = 0;
      switch (n) {
        case 1: x = static_cast<int8_t>(raw); break;
        case 2: x = static_cast<int16_t>(raw); break;
        case 4: x = static_cast<int32_t>(raw); break;
        default: x = static_cast<int64_t>(raw); break;
      }
      if (x >= 0) {
        v.type = Type::uint;
        v.u = static_cast<uint64_t>(x);
      } else {
        v.type = Type::sint;
        v.i = x;
      }
      return true;
    }
    case Type::float64: {
      const auto c = static_cast<uint8_t>(*p_++);
      const char* d = nullptr;
      v.type = Type::float64;
      if (c == 0xca) {
        if (!take(4, d)) return false;
        v.d = std::bit_cast<float>(static_cast<uint32_t>(be(d, 4)));
      } else {
        if (!take(8, d)) return false;
        v.d = std::bit_cast<double>(be(d, 8));
      }
      return true;
    }
    case Type::str: v.type = Type::str; return read_str(v.s);
    case Type::bin: v.type = Type::bin; return read_bin(v.s);
    case Type::array: {
      uint32_t n = 0;
      if (!read_array(n)) return false;
      v.type = Type::array;
      v.array.resize(n);
      for (auto& e : v.array)
        if (!read_value(e, depth + 1)) return false;
      return true;
    }
    case Type::map: {
      uint32_t n = 0;
      if (!read_map(n)) return false;
      v.type = Type::map;
      v.map.resize(n);
      for (size_t i = 0; i < v.map.size(); ++i) {
        auto& [k, e] = v.map[i];
        if (!read_str(k)) return false;
        for (size_t j = 0; j < i; ++j)
          if (v.map[j].first == k) return fail();  // duplicate key
        if (!read_value(e, depth + 1)) return false;
      }
      return true;
    }
    default: return fail();  // ext, 0xc1, end of input
  }
}

bool Reader::skip(int depth) {
  Value v;
  return read_value(v, depth);
}

}  // namespace busgate::proto::mp
