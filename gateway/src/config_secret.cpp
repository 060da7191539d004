#include "config_secret.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "config.hpp"

namespace busgate::gw {
namespace {

constexpr size_t kMaxSecretFile = 1 << 20;  // a secret file is small; this bounds a wrong path (/dev/zero)
constexpr const char* kForms = "must be a string, {file: PATH} or {env: NAME}";

[[noreturn]] void fail(const std::string& key, const std::string& what) { throw ConfigError(key + ": " + what); }

void strip_trailing(std::string& s) {
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n' ||
                        s.back() == '\v' || s.back() == '\f'))
    s.pop_back();
}

std::string read_secret_file(const std::string& path, const std::string& key, const std::string& source) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(key, source + " cannot be read: " + std::strerror(errno));
  std::string out;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      fail(key, source + " cannot be read: " + std::strerror(err));
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > kMaxSecretFile) {
      ::close(fd);
      fail(key, source + " is larger than " + std::to_string(kMaxSecretFile) + " bytes");
    }
  }
  ::close(fd);
  return out;
}

// The raw text of one item and where it came from; `plain` tells a string written in the file.
struct Raw {
  std::string text;
  std::string source;
  bool plain = false;
};

Raw read_item(const YAML::Node& n, const std::string& key) {
  if (n.IsScalar()) return {n.as<std::string>(), "", true};
  if (!n.IsMap() || n.size() != 1) fail(key, kForms);
  const auto kv = *n.begin();
  const auto form = kv.first.as<std::string>();
  const YAML::Node arg = kv.second;
  // The mapping's key is not repeated: `token: {s3cret}` is YAML for a mapping whose key is the secret.
  if (form != "file" && form != "env") fail(key, kForms);
  if (!arg.IsScalar() || arg.as<std::string>().empty())
    fail(key, "{" + form + ": ...} needs " + (form == "file" ? "a path" : "a variable name"));
  const auto name = arg.as<std::string>();
  Raw r;
  if (form == "file") {
    r.source = "file '" + name + "'";
    r.text = read_secret_file(name, key, r.source);
  } else {
    r.source = "environment variable " + name;
    const char* v = std::getenv(name.c_str());
    if (!v) fail(key, r.source + " is not set");
    r.text = v;
  }
  strip_trailing(r.text);
  if (r.text.empty()) fail(key, r.source + " is empty");
  return r;
}

// The values of one list item: a plain string as written, a file or variable one per non-empty line.
void append_values(const YAML::Node& n, const std::string& key, std::vector<SecretValue>& out) {
  Raw r = read_item(n, key);
  if (r.plain) {
    out.push_back({std::move(r.text), key, ""});
    return;
  }
  std::vector<std::string> lines;
  size_t start = 0;
  while (start <= r.text.size()) {
    size_t end = r.text.find('\n', start);
    if (end == std::string::npos) end = r.text.size();
    lines.push_back(r.text.substr(start, end - start));
    start = end + 1;
  }
  const bool several = lines.size() > 1;
  for (size_t i = 0; i < lines.size(); ++i) {
    strip_trailing(lines[i]);
    if (lines[i].empty()) continue;
    out.push_back({std::move(lines[i]), key, several ? r.source + " line " + std::to_string(i + 1) : r.source});
  }
}

}  // namespace

SecretValue resolve_secret(const YAML::Node& n, const std::string& key) {
  Raw r = read_item(n, key);
  if (!r.plain && r.text.find('\n') != std::string::npos)
    fail(key, r.source + " holds several lines; this key takes one value");
  return {std::move(r.text), key, std::move(r.source)};
}

std::vector<SecretValue> resolve_secret_list(const YAML::Node& n, const std::string& key) {
  std::vector<SecretValue> out;
  if (!n.IsSequence()) {
    if (!n.IsScalar() && !n.IsMap()) fail(key, "must be a list of strings, {file: PATH} or {env: NAME}");
    append_values(n, key, out);
    return out;
  }
  for (size_t i = 0; i < n.size(); ++i) append_values(n[i], key + "[" + std::to_string(i) + "]", out);
  return out;
}

void secret_error(const SecretValue& v, const std::string& what) {
  fail(v.key, (v.source.empty() ? "" : v.source + ": ") + what);
}

}  // namespace busgate::gw
