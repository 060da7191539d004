#include "nats_handshake.hpp"

#include <nlohmann/json.hpp>

namespace busgate::gw {

std::optional<NatsInfo> parse_nats_info(std::string_view text, std::string* why) {
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded()) {
    if (why) *why = "not JSON";
    return std::nullopt;
  }
  if (!j.is_object()) {
    if (why) *why = "not a JSON object";
    return std::nullopt;
  }
  NatsInfo info;
  if (auto it = j.find("tls_required"); it != j.end() && it->is_boolean()) info.tls_required = it->get<bool>();
  if (auto it = j.find("max_payload"); it != j.end() && it->is_number_integer()) {
    const int64_t v = it->is_number_unsigned() && it->get<uint64_t>() > INT64_MAX ? INT64_MAX : it->get<int64_t>();
    info.max_payload = v > 0 ? v : 0;
  }
  if (auto it = j.find("nonce"); it != j.end() && it->is_string()) info.nonce = it->get<std::string>();
  if (auto it = j.find("connect_urls"); it != j.end() && it->is_array())
    for (const auto& u : *it)
      if (u.is_string()) info.connect_urls.push_back(u.get<std::string>());
  return info;
}

std::string nats_connect_message(const NatsLinkOptions& opt, const NatsCreds& creds, const NatsServerUrl& server,
                                 std::string_view nonce, bool tls) {
  nlohmann::json c = {{"verbose", false},  {"pedantic", false}, {"tls_required", tls},
                      {"name", opt.name},   {"lang", "busgate"}, {"version", "0.1.0"},
                      {"protocol", 1},      {"echo", true},      {"headers", true},
                      {"no_responders", true}};
  const NatsUserAuth auth = nats_user_auth(server, opt.user, opt.password, opt.token);
  if (!auth.user.empty()) {
    c["user"] = auth.user;
    c["pass"] = auth.pass;
  }
  if (!auth.token.empty()) c["auth_token"] = auth.token;
  if (!creds.seed.empty() && !nonce.empty()) {
    c["sig"] = nkey_sign(creds.seed, nonce);
    if (!creds.jwt.empty()) c["jwt"] = creds.jwt;
    else c["nkey"] = nkey_public_key(creds.seed);
  }
  // Names and credentials come from the configuration: invalid UTF-8 is replaced, never thrown.
  return "CONNECT " + c.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\r\nPING\r\n";
}

NatsHandshake::NatsHandshake(const NatsLinkOptions& opt, const NatsCreds& creds, NatsServerUrl server)
    : opt_(opt), creds_(creds), server_(std::move(server)) {}

NatsHandshake::Step NatsHandshake::on_item(const NatsItem& item) {
  Step s;
  switch (state_) {
    case State::info: {
      if (item.op != NatsOp::info) {
        s.next = Next::fail;
        s.data = "the server did not start with INFO (not a NATS server?)";
        return s;
      }
      std::string why;
      s.info = parse_nats_info(item.text, &why);
      if (!s.info) {
        s.next = Next::fail;
        s.data = "malformed INFO: " + why;
        return s;
      }
      nonce_ = s.info->nonce;
      tls_ = server_.tls || s.info->tls_required || !opt_.tls_ca.empty() || !opt_.tls_cert.empty();
      if (tls_) {
        state_ = State::tls;
        s.next = Next::start_tls;
        return s;
      }
      Step c = connect();
      c.info = std::move(s.info);
      return c;
    }
    case State::tls:  // nothing is read during the TLS handshake
      return s;
    case State::pong:
      switch (item.op) {
        case NatsOp::pong:
          state_ = State::done;
          s.next = Next::ready;
          return s;
        case NatsOp::err:
          s.next = Next::fail;
          s.refused = true;
          s.data = "the server refused the connection: " + std::string(item.text);
          return s;
        case NatsOp::info:
          s.info = parse_nats_info(item.text);  // a later INFO only adds to what is known
          return s;
        default:
          return s;  // +OK, PING; MSG cannot come before the PONG to the first PING
      }
    case State::done:
      return s;
  }
  return s;
}

NatsHandshake::Step NatsHandshake::tls_done() { return connect(); }

NatsHandshake::Step NatsHandshake::connect() {
  Step s;
  try {
    s.data = nats_connect_message(opt_, creds_, server_, nonce_, tls_);
  } catch (const std::exception& e) {
    s.next = Next::fail;
    s.data = e.what();
    return s;
  }
  state_ = State::pong;
  s.next = Next::send;
  return s;
}

std::string NatsHandshake::protocol_error(const std::string& parser_error) const {
  return (state_ == State::info ? "the server did not start with INFO (not a NATS server?): "
                                : "protocol error from the server: ") +
         parser_error;
}

std::string NatsHandshake::read_error(const std::string& error) const {
  return (state_ == State::info ? "no INFO from the server: "
                                : "the server closed the connection during the handshake: ") +
         error;
}

std::string NatsHandshake::waiting_for() const {
  switch (state_) {
    case State::info: return "connected, but no INFO from the server (not a NATS server?)";
    case State::tls: return "no TLS handshake";
    case State::pong: return "no answer to CONNECT";
    case State::done: return "no answer";
  }
  return "no answer";
}

}  // namespace busgate::gw
