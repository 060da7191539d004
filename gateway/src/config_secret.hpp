#pragma once
// Secrets of the configuration (docs/configuration.md, "Secrets"): a key that holds a secret takes a
// plain string, `{file: PATH}` (the file's content) or `{env: NAME}` (an environment variable's
// value). Errors name the key and where the value was to come from, never the value itself, e.g.
// `admin.token: environment variable BUSGATE_ADMIN_TOKEN is not set`.

#include <yaml-cpp/yaml.h>

#include <string>
#include <vector>

namespace busgate::gw {

// One value of a secret: the text and, for error messages, the key it was given at and where it
// came from: "" for a plain string, "file '/run/x'", "file '/run/x' line 2" or "environment
// variable NAME".
struct SecretValue {
  std::string text;
  std::string key;
  std::string source;
};

// A key holding one secret (admin.token, bus.password, ...). A file's or variable's value loses its
// trailing whitespace and must then be non-empty and a single line. Throws ConfigError naming `key`.
SecretValue resolve_secret(const YAML::Node& n, const std::string& key);

// A key holding a list of secrets (a tenant's tokens, tokens_sha256): a list whose items are any
// form of secret, or one item alone. Each non-empty line of a file or variable is one value, so one
// file can hold a rotating set. Item i's errors name `key[i]`; a lone item's name `key`.
std::vector<SecretValue> resolve_secret_list(const YAML::Node& n, const std::string& key);

// Throws ConfigError "KEY: what" or, for a value from a file or variable, "KEY: SOURCE: what": for a
// value that fails a later check (too short, not a digest), without repeating the value.
[[noreturn]] void secret_error(const SecretValue& v, const std::string& what);

}  // namespace busgate::gw
