#include "nats_auth.hpp"

#include <openssl/evp.h>

#include <array>
#include <fstream>
#include <memory>
#include <sstream>
#include <vector>

#include "config.hpp"

namespace busgate::gw {

namespace {

constexpr uint8_t kPrefixSeed = 18 << 3;  // 'S'
constexpr uint8_t kPrefixUser = 20 << 3;  // 'U'
constexpr char kBase32[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

uint16_t crc16(const uint8_t* p, size_t n) {  // CRC-16/XMODEM, as nkeys use
  uint16_t crc = 0;
  for (size_t i = 0; i < n; ++i) {
    crc ^= static_cast<uint16_t>(p[i]) << 8;
    for (int b = 0; b < 8; ++b) crc = (crc & 0x8000) ? static_cast<uint16_t>((crc << 1) ^ 0x1021) : static_cast<uint16_t>(crc << 1);
  }
  return crc;
}

std::string base32_encode(const std::vector<uint8_t>& in) {
  std::string out;
  uint32_t buf = 0;
  int bits = 0;
  for (uint8_t b : in) {
    buf = (buf << 8) | b;
    bits += 8;
    while (bits >= 5) {
      out += kBase32[(buf >> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += kBase32[(buf << (5 - bits)) & 31];
  return out;
}

bool base32_decode(std::string_view in, std::vector<uint8_t>& out) {
  uint32_t buf = 0;
  int bits = 0;
  for (char c : in) {
    int v;
    if (c >= 'A' && c <= 'Z') v = c - 'A';
    else if (c >= '2' && c <= '7') v = c - '2' + 26;
    else return false;
    buf = (buf << 5) | static_cast<uint32_t>(v);
    bits += 5;
    if (bits >= 8) {
      out.push_back(static_cast<uint8_t>(buf >> (bits - 8)));
      bits -= 8;
    }
  }
  return true;
}

// The 32-byte Ed25519 seed inside an encoded user seed.
std::array<uint8_t, 32> raw_seed(std::string_view seed) {
  std::vector<uint8_t> raw;
  if (!base32_decode(seed, raw) || raw.size() != 36)
    throw ConfigError("bus.creds_file: the nkey seed is not valid base32 of the right length");
  const uint16_t want = static_cast<uint16_t>(raw[34] | (raw[35] << 8));
  if (crc16(raw.data(), 34) != want) throw ConfigError("bus.creds_file: the nkey seed fails its checksum");
  const uint8_t b1 = raw[0] & 248;
  const uint8_t kind = static_cast<uint8_t>(((raw[0] & 7) << 5) | ((raw[1] & 248) >> 3));
  if (b1 != kPrefixSeed || kind != kPrefixUser)
    throw ConfigError("bus.creds_file: the seed is not a user nkey seed (it must start with SU)");
  std::array<uint8_t, 32> out{};
  std::copy(raw.begin() + 2, raw.begin() + 34, out.begin());
  return out;
}

using PKey = std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)>;

PKey key_of(std::string_view seed) {
  const auto s = raw_seed(seed);
  PKey k(EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, nullptr, s.data(), s.size()), &EVP_PKEY_free);
  if (!k) throw ConfigError("bus.creds_file: the nkey seed is not a usable Ed25519 key");
  return k;
}

std::string base64url(const uint8_t* p, size_t n) {
  static constexpr char kAlpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  size_t i = 0;
  for (; i + 2 < n; i += 3) {
    const uint32_t v = (p[i] << 16) | (p[i + 1] << 8) | p[i + 2];
    out += {kAlpha[v >> 18], kAlpha[(v >> 12) & 63], kAlpha[(v >> 6) & 63], kAlpha[v & 63]};
  }
  if (i + 1 == n) {
    const uint32_t v = p[i] << 16;
    out += {kAlpha[v >> 18], kAlpha[(v >> 12) & 63]};
  } else if (i + 2 == n) {
    const uint32_t v = (p[i] << 16) | (p[i + 1] << 8);
    out += {kAlpha[v >> 18], kAlpha[(v >> 12) & 63], kAlpha[(v >> 6) & 63]};
  }
  return out;
}

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return {};
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

}  // namespace

NatsCreds load_nats_creds(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw ConfigError("bus.creds_file: cannot read '" + path + "'");
  std::vector<std::string> lines;
  for (std::string l; std::getline(f, l);)
    if (auto t = trim(l); !t.empty()) lines.push_back(t);
  NatsCreds c;
  // The value of a block is the first line after its BEGIN marker.
  for (size_t i = 0; i + 1 < lines.size(); ++i) {
    if (lines[i].find("BEGIN NATS USER JWT") != std::string::npos) c.jwt = lines[i + 1];
    if (lines[i].find("BEGIN USER NKEY SEED") != std::string::npos) c.seed = lines[i + 1];
  }
  if (c.seed.empty() && lines.size() == 1 && lines[0].starts_with("SU")) c.seed = lines[0];
  if (c.seed.empty()) throw ConfigError("bus.creds_file: '" + path + "' holds no user nkey seed");
  if (c.jwt.find("-----") != std::string::npos) throw ConfigError("bus.creds_file: '" + path + "' has an empty JWT block");
  key_of(c.seed);  // validates the seed now rather than at the first connection
  return c;
}

std::string nkey_public_key(std::string_view seed) {
  const PKey k = key_of(seed);
  std::vector<uint8_t> raw(1 + 32);
  raw[0] = kPrefixUser;
  size_t n = 32;
  if (EVP_PKEY_get_raw_public_key(k.get(), raw.data() + 1, &n) != 1 || n != 32)
    throw ConfigError("bus.creds_file: cannot derive the public key of the seed");
  const uint16_t crc = crc16(raw.data(), raw.size());
  raw.push_back(static_cast<uint8_t>(crc & 0xff));
  raw.push_back(static_cast<uint8_t>(crc >> 8));
  return base32_encode(raw);
}

std::string nkey_sign(std::string_view seed, std::string_view nonce) {
  const PKey k = key_of(seed);
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  uint8_t sig[64];
  size_t n = sizeof sig;
  if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, k.get()) != 1 ||
      EVP_DigestSign(ctx.get(), sig, &n, reinterpret_cast<const uint8_t*>(nonce.data()), nonce.size()) != 1)
    throw ConfigError("bus.creds_file: signing the server's nonce failed");
  return base64url(sig, n);
}

}  // namespace busgate::gw
