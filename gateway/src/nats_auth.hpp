#pragma once
// NATS decentralised authentication: user credentials files (a user JWT and its nkey seed) and
// nkey seeds, signing the server's nonce with Ed25519.

#include <string>
#include <string_view>

namespace busgate::gw {

struct NatsCreds {
  std::string jwt;   // empty for a seed-only file (plain nkey authentication)
  std::string seed;  // "SU..."
};

// Reads a .creds file (the "-----BEGIN NATS USER JWT-----" and "-----BEGIN USER NKEY SEED-----"
// blocks) or a file holding a seed alone. Throws ConfigError naming the file and the problem.
NatsCreds load_nats_creds(const std::string& path);

// The public key ("U...") of a user nkey seed. Throws ConfigError when the seed is malformed.
std::string nkey_public_key(std::string_view seed);
// The Ed25519 signature of `nonce` with the seed's key, base64url without padding (as CONNECT's
// "sig" field carries it).
std::string nkey_sign(std::string_view seed, std::string_view nonce);

}  // namespace busgate::gw
