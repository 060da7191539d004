#pragma once
// Minimal msgpack reader and writer: the subset busgate frames use. The reader never throws,
// never reads past its input and never trusts a length it has not checked against the bytes left.

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace busgate::proto {
// Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF.
bool is_valid_utf8(std::string_view s);
}  // namespace busgate::proto

namespace busgate::proto::mp {

// Appends msgpack to a caller-owned buffer, always using the smallest encoding.
class Writer {
 public:
  explicit Writer(std::string& out) : out_(out) {}
  void nil() { out_.push_back(static_cast<char>(0xc0)); }
  void boolean(bool v) { out_.push_back(static_cast<char>(v ? 0xc3 : 0xc2)); }
  void uint(uint64_t v);
  void sint(int64_t v);
  void float64(double v);
  void str(std::string_view s);
  void bin(std::string_view b);
  void array_header(uint32_t n);
  void map_header(uint32_t n);
  void raw(std::string_view bytes) { out_.append(bytes); }
  std::string& buffer() { return out_; }

 private:
  void be(uint64_t v, int bytes);
  std::string& out_;
};

enum class Type { nil, boolean, uint, sint, float64, str, bin, array, map, ext, invalid, end };

struct MapEntry;

// A decoded msgpack value. Strings and binaries reference the input buffer (no copy).
struct Value {
  Type type = Type::nil;
  bool b = false;
  uint64_t u = 0;
  int64_t i = 0;
  double d = 0;
  std::string_view s;  // str, bin and ext bytes
  std::vector<Value> array;
  std::vector<MapEntry> map;  // keys are str (non-str keys are rejected)

  bool is_nil() const { return type == Type::nil; }
  const Value* get(std::string_view key) const;
};

struct MapEntry {
  std::string_view first;
  Value second;
};

void write_value(Writer& w, const Value& v);

class Reader {
 public:
  explicit Reader(std::string_view in) : p_(in.data()), end_(in.data() + in.size()) {}
  Type peek() const;
  size_t remaining() const { return static_cast<size_t>(end_ - p_); }
  bool at_end() const { return p_ == end_; }
  bool failed() const { return failed_; }

  bool read_nil();
  bool read_bool(bool& v);
  bool read_uint(uint64_t& v);  // accepts any non-negative integer encoding
  bool read_str(std::string_view& v);  // rejects text that is not valid UTF-8
  bool read_bin(std::string_view& v);
  bool read_array(uint32_t& n);  // n is checked against the bytes left
  bool read_map(uint32_t& n);
  // Nested at most kMaxDepth; map keys must be str and unique.
  bool read_value(Value& v, int depth = 0);
  bool skip(int depth = 0);

  static constexpr int kMaxDepth = 32;

 private:
  bool fail() {
    failed_ = true;
    return false;
  }
  bool take(size_t n, const char*& out);
  uint64_t be(const char* p, int n) const;
  const char* p_;
  const char* end_;
  bool failed_ = false;
};

}  // namespace busgate::proto::mp
