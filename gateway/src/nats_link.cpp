#include "nats_link.hpp"

#include <openssl/ssl.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <array>
#include <charconv>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "config.hpp"
#include "nats_auth.hpp"
#include "nats_parser.hpp"

namespace busgate::gw {

namespace asio = boost::asio;
namespace ssl = asio::ssl;
using asio::ip::tcp;
using boost::system::error_code;
using proto::Code;
using namespace std::literals;

namespace {

// Above this much queued for the socket the link is congested (publishers pause their clients);
// above kHardQueued it refuses publishes.
constexpr size_t kMaxQueued = 8u << 20;
constexpr size_t kHardQueued = 64u << 20;
constexpr size_t kKeepBuffer = 1u << 20;
constexpr int kMaxRefusedWaitMs = 5000;
constexpr size_t kReadChunk = 256u << 10;

struct ServerUrl {
  std::string text;  // as configured or announced
  std::string host, port, user, pass;
  bool tls = false;
};

ServerUrl parse_url(const std::string& s) {
  ServerUrl u;
  u.text = s;
  std::string rest = s;
  if (auto p = rest.find("://"); p != std::string::npos) {
    const std::string scheme = rest.substr(0, p);
    if (scheme == "tls") u.tls = true;
    else if (scheme != "nats")
      throw ConfigError("bus.servers: '" + s + "': the scheme must be nats:// or tls://");
    rest = rest.substr(p + 3);
  }
  if (auto slash = rest.find('/'); slash != std::string::npos) rest = rest.substr(0, slash);
  if (auto at = rest.rfind('@'); at != std::string::npos) {
    const std::string info = rest.substr(0, at);
    rest = rest.substr(at + 1);
    if (auto colon = info.find(':'); colon != std::string::npos) {
      u.user = info.substr(0, colon);
      u.pass = info.substr(colon + 1);
    } else {
      u.user = info;  // a token
    }
  }
  if (!rest.empty() && rest.front() == '[') {  // [v6]:port
    const auto close = rest.find(']');
    if (close == std::string::npos) throw ConfigError("bus.servers: '" + s + "': unterminated IPv6 address");
    u.host = rest.substr(1, close - 1);
    rest = rest.substr(close + 1);
    u.port = rest.starts_with(":") ? rest.substr(1) : "4222";
  } else if (auto colon = rest.rfind(':'); colon != std::string::npos) {
    u.host = rest.substr(0, colon);
    u.port = rest.substr(colon + 1);
  } else {
    u.host = rest;
    u.port = "4222";
  }
  int port = 0;
  const auto [ptr, ec] = std::from_chars(u.port.data(), u.port.data() + u.port.size(), port);
  if (u.host.empty() || ec != std::errc{} || ptr != u.port.data() + u.port.size() || port <= 0 || port > 65535)
    throw ConfigError("bus.servers: '" + s + "' is not a server address (host:port)");
  return u;
}

void append_num(std::string& out, size_t v) {
  char buf[24];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, end);
}

void encode_pub(std::string& out, std::string_view subject, std::string_view reply, std::string_view headers,
                std::string_view payload) {
  out.append(headers.empty() ? "PUB "sv : "HPUB "sv);
  out.append(subject);
  out.push_back(' ');
  if (!reply.empty()) {
    out.append(reply);
    out.push_back(' ');
  }
  if (!headers.empty()) {
    append_num(out, headers.size());
    out.push_back(' ');
  }
  append_num(out, headers.size() + payload.size());
  out.append("\r\n"sv);
  out.append(headers);
  out.append(payload);
  out.append("\r\n"sv);
}

void append_sub(std::string& out, std::string_view subject, std::string_view queue, uint64_t sid) {
  out.append("SUB "sv).append(subject).push_back(' ');
  if (!queue.empty()) out.append(queue).push_back(' ');
  append_num(out, sid);
  out.append("\r\n"sv);
}

bool is_ip(const std::string& host) {
  error_code ec;
  asio::ip::make_address(host, ec);
  return !ec;
}

}  // namespace

struct NatsLink::Impl {
  NatsLinkOptions opt;
  MsgFn on_msg;
  EventFn on_event;
  NatsCreds creds;

  asio::io_context io{1};
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  std::thread thread;

  // ---- link thread only ----
  std::unique_ptr<ssl::context> tls_ctx;
  tcp::resolver resolver{io};
  // The previous connection's stream objects outlive it by one connection, so that completion
  // handlers still queued for them never touch freed memory.
  std::unique_ptr<tcp::socket> sock, old_sock;
  std::unique_ptr<ssl::stream<tcp::socket&>> tls, old_tls;
  asio::steady_timer connect_timer{io}, ping_timer{io}, retry_timer{io};
  std::vector<ServerUrl> pool;
  size_t next_server = 0;
  ServerUrl current;
  uint64_t gen = 0;  // bumped when a connection ends; handlers of older connections do nothing
  std::string hs;    // handshake reads
  std::array<char, 4096> hs_chunk{};
  bool info_seen = false;  // the current connection's first INFO arrived
  NatsParser parser;  // the server's protocol messages, in `hs` during the handshake, then in `rbuf`
  std::string nonce;
  bool server_tls_required = false;  // from the server's INFO
  std::vector<char> rbuf;
  size_t rbeg = 0, rend = 0;
  int pings_out = 0;
  bool ever_connected = false;
  bool stopping = false;
  std::string last_failure;
  std::string phase;  // what the connect timer reports when it fires
  bool refused = false;  // the current attempt ended with -ERR during the handshake
  int refusals = 0;      // consecutive attempts that did

  // ---- shared, under mu ----
  std::mutex mu;
  std::condition_variable cv;  // start() waits on it for the first attempt's outcome
  bool up = false;
  bool first_attempt_done = false;
  int fd = -1;  // the plain socket's descriptor while up (callers may write to it directly), else -1
  bool writing = false, posted = false;
  std::string out, wbuf;
  size_t out_partial = 0;   // leading bytes of `out` that finish a partly written direct send
  size_t unsent_pings = 0;  // PINGs in `out`: the last entries of `pongs`
  std::deque<DoneFn> pongs;
  std::map<uint64_t, std::pair<std::string, std::string>> subs;  // sid → subject, queue

  std::vector<std::function<void()>> drain_waiters;
  std::atomic<bool> congested{false};
  std::atomic<bool> up_flag{false};
  std::atomic<int64_t> max_payload{0};
  std::atomic<uint64_t> reconnects{0};

  Impl(NatsLinkOptions o, MsgFn m, EventFn e) : opt(std::move(o)), on_msg(std::move(m)), on_event(std::move(e)) {
    if (opt.servers.empty()) throw ConfigError("bus.servers: at least one server is required");
    for (const auto& s : opt.servers) pool.push_back(parse_url(s));
    if (!opt.creds_file.empty()) creds = load_nats_creds(opt.creds_file);
    bool want_tls = !opt.tls_ca.empty() || !opt.tls_cert.empty();
    for (const auto& u : pool) want_tls = want_tls || u.tls;
    if (want_tls) tls_ctx = make_tls_context();
    rbuf.resize(kReadChunk);
  }

  std::unique_ptr<ssl::context> make_tls_context() {
    auto c = std::make_unique<ssl::context>(ssl::context::tls_client);
    SSL_CTX_set_min_proto_version(c->native_handle(), TLS1_2_VERSION);
    error_code ec;
    if (!opt.tls_ca.empty()) {
      c->load_verify_file(opt.tls_ca, ec);
      if (ec) throw ConfigError("bus.tls.ca: cannot use '" + opt.tls_ca + "': " + ec.message());
    } else {
      c->set_default_verify_paths(ec);
    }
    if (!opt.tls_cert.empty()) {
      c->use_certificate_chain_file(opt.tls_cert, ec);
      if (ec) throw ConfigError("bus.tls.cert: cannot use '" + opt.tls_cert + "': " + ec.message());
      c->use_private_key_file(opt.tls_key.empty() ? opt.tls_cert : opt.tls_key, ssl::context::pem, ec);
      if (ec) throw ConfigError("bus.tls.key: cannot use '" + opt.tls_key + "': " + ec.message());
    }
    c->set_verify_mode(ssl::verify_peer);
    return c;
  }

  template <class F>
  void with_stream(F&& f) {
    if (tls) f(*tls);
    else f(*sock);
  }

  // ---------------------------------------------------------------- connecting (link thread)

  void connect_next() {
    if (stopping) return;
    const uint64_t g = gen;
    current = pool[next_server++ % pool.size()];
    hs.clear();
    nonce.clear();
    info_seen = false;
    rbeg = rend = 0;
    old_tls = std::move(tls);
    old_sock = std::move(sock);
    sock = std::make_unique<tcp::socket>(io);
    connect_timer.expires_after(std::chrono::milliseconds(opt.connect_timeout_ms));
    phase = "no connection";
    connect_timer.async_wait([this, g](error_code ec) {
      if (!ec) fail(g, phase + " within " + std::to_string(opt.connect_timeout_ms) + " ms");
    });
    resolver.async_resolve(current.host, current.port, [this, g](error_code ec, tcp::resolver::results_type r) {
      if (g != gen) return;
      if (ec) return fail(g, "cannot resolve " + current.host + ": " + ec.message());
      asio::async_connect(*sock, r, [this, g](error_code ec2, const tcp::endpoint&) {
        if (g != gen) return;
        if (ec2) return fail(g, ec2.message());
        sock->set_option(tcp::no_delay(true), ec2);
        phase = "connected, but no INFO from the server (not a NATS server?)";
        handshake_items(g, "no INFO from the server: ", [this, g](NatsOp op, const std::string& text) {
          on_info(g, op, text);
          return false;
        });
      });
    });
  }

  // Applies an INFO's JSON (the first one, or one the server sends later). False when malformed.
  bool apply_info(std::string_view text, std::string* why = nullptr) {
    nlohmann::json info;
    try {
      info = nlohmann::json::parse(text);
    } catch (const std::exception& e) {
      if (why) *why = e.what();
      return false;
    }
    if (!info.is_object()) {
      if (why) *why = "not a JSON object";
      return false;
    }
    const auto tls_it = info.find("tls_required");
    server_tls_required = tls_it != info.end() && tls_it->is_boolean() && tls_it->get<bool>();
    if (auto it = info.find("max_payload"); it != info.end() && it->is_number_integer()) {
      max_payload.store(it->get<int64_t>());
      parser.set_max_payload(it->get<int64_t>());
    }
    if (auto it = info.find("nonce"); it != info.end() && it->is_string()) nonce = it->get<std::string>();
    if (auto it = info.find("connect_urls"); it != info.end() && it->is_array()) {
      for (const auto& u : *it) {
        if (!u.is_string()) continue;
        try {
          ServerUrl su = parse_url((current.tls ? "tls://" : "nats://") + u.get<std::string>());
          su.user = current.user;
          su.pass = current.pass;
          bool known = false;
          for (const auto& p : pool) known = known || (p.host == su.host && p.port == su.port);
          if (!known) {
            spdlog::info("nats: the cluster announced {}", su.text);
            pool.push_back(std::move(su));
          }
        } catch (const std::exception&) {
        }
      }
    }
    return true;
  }

  // Hands the handshake's protocol messages to `fn` (their kind, and the INFO or -ERR text) as they
  // arrive in `hs`, reading more as needed, for as long as `fn` returns true. Reads are bounded by
  // the parser's limits; a protocol error, or a read error (reported after `read_failure`), fails the
  // attempt.
  using HandshakeFn = std::function<bool(NatsOp, const std::string&)>;
  void handshake_items(uint64_t g, std::string read_failure, HandshakeFn fn) {
    for (bool more = true; more;) {
      NatsItem item;
      switch (parser.next(hs, item)) {
        case NatsParse::item: {
          const NatsOp op = item.op;
          const std::string text(item.text);
          hs.erase(0, parser.consumed());
          if (!fn(op, text)) return;
          break;
        }
        case NatsParse::error:
          return fail(g, (info_seen ? "protocol error from the server: "
                                    : "the server did not start with INFO (not a NATS server?): ") +
                             parser.error());
        case NatsParse::need_more:
          more = false;
          break;
      }
    }
    with_stream([&](auto& s) {
      s.async_read_some(asio::buffer(hs_chunk),
                        [this, g, why = std::move(read_failure), fn = std::move(fn)](error_code ec, size_t n) mutable {
                          if (g != gen) return;
                          if (ec) return fail(g, why + ec.message());
                          hs.append(hs_chunk.data(), n);
                          handshake_items(g, std::move(why), std::move(fn));
                        });
    });
  }

  void on_info(uint64_t g, NatsOp op, const std::string& text) {
    if (op != NatsOp::info) return fail(g, "the server did not start with INFO (not a NATS server?)");
    info_seen = true;
    if (std::string why; !apply_info(text, &why)) return fail(g, "malformed INFO: " + why);
    const bool use_tls = current.tls || server_tls_required || !opt.tls_ca.empty() || !opt.tls_cert.empty();
    phase = use_tls ? "no TLS handshake" : "no answer to CONNECT";
    if (!use_tls) return send_connect(g, false);
    if (!tls_ctx) {
      try {
        tls_ctx = make_tls_context();
      } catch (const std::exception& e) {
        return fail(g, e.what());
      }
    }
    tls = std::make_unique<ssl::stream<tcp::socket&>>(*sock, *tls_ctx);
    if (!is_ip(current.host)) SSL_set_tlsext_host_name(tls->native_handle(), current.host.c_str());
    tls->set_verify_callback(ssl::host_name_verification(current.host));
    tls->async_handshake(ssl::stream_base::client, [this, g](error_code ec) {
      if (g != gen) return;
      if (ec) return fail(g, "TLS handshake: " + ec.message());
      phase = "no answer to CONNECT";
      send_connect(g, true);
    });
  }

  void send_connect(uint64_t g, bool is_tls) {
    nlohmann::json c = {{"verbose", false},  {"pedantic", false}, {"tls_required", is_tls},
                        {"name", opt.name},   {"lang", "busgate"}, {"version", "0.1.0"},
                        {"protocol", 1},      {"echo", true},      {"headers", true},
                        {"no_responders", true}};
    const std::string& user = current.user.empty() ? opt.user : current.user;
    const std::string& pass = current.user.empty() ? opt.password : current.pass;
    if (!user.empty() && (!pass.empty() || !current.user.empty())) {
      if (current.pass.empty() && !current.user.empty()) c["auth_token"] = user;  // nats://token@host
      else {
        c["user"] = user;
        c["pass"] = pass;
      }
    }
    if (!opt.token.empty()) c["auth_token"] = opt.token;
    if (!creds.seed.empty() && !nonce.empty()) {
      try {
        c["sig"] = nkey_sign(creds.seed, nonce);
        if (!creds.jwt.empty()) c["jwt"] = creds.jwt;
        else c["nkey"] = nkey_public_key(creds.seed);
      } catch (const std::exception& e) {
        return fail(g, e.what());
      }
    }
    auto msg = std::make_shared<std::string>("CONNECT " + c.dump() + "\r\nPING\r\n");
    with_stream([&](auto& s) {
      asio::async_write(s, asio::buffer(*msg), [this, g, msg](error_code ec, size_t) {
        if (g != gen) return;
        if (ec) return fail(g, "sending CONNECT: " + ec.message());
        read_handshake_line(g);
      });
    });
  }

  void read_handshake_line(uint64_t g) {
    handshake_items(g, "the server closed the connection during the handshake: ",
                    [this, g](NatsOp op, const std::string& text) {
                      if (op == NatsOp::pong) {
                        on_ready(g);
                        return false;
                      }
                      if (op == NatsOp::err) {
                        refused = true;
                        fail(g, "the server refused the connection: " + text);
                        return false;
                      }
                      if (op == NatsOp::info) apply_info(text);
                      return true;  // +OK, PING, INFO
                    });
  }

  void on_ready(uint64_t g) {
    connect_timer.cancel();
    pings_out = 0;
    refusals = 0;
    last_failure.clear();
    // Bytes read past the handshake belong to the message stream.
    if (hs.size() > rbuf.size()) rbuf.resize(hs.size() + kReadChunk);
    std::memcpy(rbuf.data(), hs.data(), hs.size());
    rend = hs.size();
    hs.clear();
    {
      std::lock_guard lk(mu);
      std::string pre;
      for (const auto& [sid, sq] : subs) append_sub(pre, sq.first, sq.second, sid);
      out.insert(0, pre);  // what was queued but never written follows the subscriptions
      up = true;
      up_flag.store(true);
      first_attempt_done = true;
      fd = tls ? -1 : sock->native_handle();
      cv.notify_all();
    }
    const bool again = ever_connected;
    ever_connected = true;
    if (again) reconnects.fetch_add(1);
    spdlog::info("nats: connection '{}' {} to {}", opt.name, again ? "re-established" : "established", current.text);
    if (on_event) on_event(again ? "reconnected" : "connected", current.text);
    schedule_ping(g);
    start_write();
    if (!parse(g)) return;
    read_more(g);
  }

  void fail(uint64_t g, const std::string& why) {
    if (g != gen || stopping) return;
    ++gen;
    connect_timer.cancel();
    ping_timer.cancel();
    resolver.cancel();
    bool was_up = false;
    std::deque<DoneFn> failed;
    {
      std::lock_guard lk(mu);
      was_up = up;
      up = false;
      up_flag.store(false);
      fd = -1;  // before the close below: no caller writes to a descriptor that may be reused
      writing = posted = false;
      wbuf.clear();
      // Complete messages never handed to the socket go out after the reconnect; the tail of a
      // partly written one cannot.
      out.erase(0, out_partial);
      out_partial = 0;
      congested.store(false);
      for (auto& f : drain_waiters) failed.push_back([f = std::move(f)](bool) { f(); });
      drain_waiters.clear();
      // PINGs still queued keep their callbacks (their PONGs come on the next connection).
      const size_t keep = std::min(unsent_pings, pongs.size());
      while (pongs.size() > keep) {
        failed.push_back(std::move(pongs.front()));
        pongs.pop_front();
      }
      if (!first_attempt_done) {
        first_attempt_done = true;
        spdlog::warn("nats: cannot connect to {}: {}; retrying in the background (not ready until connected)",
                     current.text, why);
        last_failure = why;
      }
      cv.notify_all();
    }
    error_code ec;
    if (sock) sock->close(ec);
    for (auto& f : failed)
      if (f) f(false);
    if (was_up) {
      spdlog::warn("nats: disconnected from {}: {}", current.text, why);
      if (on_event) on_event("disconnected", current.text);
    } else if (why != last_failure) {
      spdlog::warn("nats: cannot connect to {}: {}", current.text, why);
      last_failure = why;
    }
    // A server that refuses the credentials is retried less and less often (up to every 5 s); an
    // unreachable one every reconnect_wait_ms, so that the link is back soon after the server.
    refusals = refused ? refusals + 1 : 0;
    refused = false;
    int wait_ms = std::max(opt.reconnect_wait_ms, 1);
    for (int i = 1; i < refusals && wait_ms < kMaxRefusedWaitMs; ++i) wait_ms *= 2;
    retry_timer.expires_after(std::chrono::milliseconds(std::min(wait_ms, std::max(kMaxRefusedWaitMs, opt.reconnect_wait_ms))));
    retry_timer.async_wait([this](error_code e) {
      if (!e) connect_next();
    });
  }

  void schedule_ping(uint64_t g) {
    ping_timer.expires_after(std::chrono::milliseconds(opt.ping_interval_ms));
    ping_timer.async_wait([this, g](error_code ec) {
      if (ec || g != gen) return;
      if (pings_out >= opt.max_pings_out)
        return fail(g, "no PONG to the last " + std::to_string(pings_out) + " PINGs (stale connection)");
      ++pings_out;
      queue_ping(DoneFn{});
      schedule_ping(g);
    });
  }

  // ---------------------------------------------------------------- reading (link thread)

  void read_more(uint64_t g) {
    if (rbeg == rend) rbeg = rend = 0;
    if (rend == rbuf.size()) {
      if (rbeg > 0) {
        std::memmove(rbuf.data(), rbuf.data() + rbeg, rend - rbeg);
        rend -= rbeg;
        rbeg = 0;
      }
      if (rend == rbuf.size()) rbuf.resize(rbuf.size() * 2);
    }
    with_stream([&](auto& s) {
      s.async_read_some(asio::buffer(rbuf.data() + rend, rbuf.size() - rend), [this, g](error_code ec, size_t n) {
        if (g != gen) return;
        if (ec)
          return fail(g, ec == asio::error::eof ? std::string("the server closed the connection") : ec.message());
        rend += n;
        if (!parse(g)) return;
        read_more(g);
      });
    });
  }

  // Makes room for a message of `need` bytes starting at rbeg.
  void reserve_for(size_t need) {
    if (rbeg > 0) {
      std::memmove(rbuf.data(), rbuf.data() + rbeg, rend - rbeg);
      rend -= rbeg;
      rbeg = 0;
    }
    if (rbuf.size() < need) rbuf.resize(need + kReadChunk);
  }

  // Handles every complete protocol message in the buffer. False when the connection was failed (a
  // protocol error from the server: logged, and the link reconnects).
  bool parse(uint64_t g) {
    NatsItem m;
    while (rbeg < rend) {
      const NatsParse r = parser.next(std::string_view(rbuf.data() + rbeg, rend - rbeg), m);
      if (r == NatsParse::need_more) {
        if (const size_t need = parser.needed(); need > 0 && rbuf.size() - rbeg < need) reserve_for(need);
        break;
      }
      if (r == NatsParse::error) {
        fail(g, "protocol error from the server: " + parser.error());
        return false;
      }
      rbeg += parser.consumed();
      switch (m.op) {
        case NatsOp::msg:
        case NatsOp::hmsg: {
          NatsInbound in;
          in.sid = m.sid;
          in.subject = m.subject;
          in.reply = m.reply;
          in.headers = m.headers;
          in.payload = m.payload;
          on_msg(in);
          break;
        }
        case NatsOp::ping: {
          std::lock_guard lk(mu);
          out.append("PONG\r\n");
          kick_locked();
          break;
        }
        case NatsOp::pong: {
          pings_out = 0;
          DoneFn fn;
          {
            std::lock_guard lk(mu);
            if (!pongs.empty()) {
              fn = std::move(pongs.front());
              pongs.pop_front();
            }
          }
          if (fn) fn(true);
          break;
        }
        case NatsOp::info:
          apply_info(m.text);  // the parser checked the JSON; what apply_info cannot use is ignored
          break;
        case NatsOp::err:
          spdlog::warn("nats: the server reports: {}", m.text);
          break;
        case NatsOp::ok:
          break;
      }
    }
    return true;
  }

  // ---------------------------------------------------------------- writing

  void kick_locked() {
    if (!up || writing || posted || out.empty()) return;
    posted = true;
    asio::post(io, [this] { start_write(); });
  }

  // Link thread.
  void start_write() {
    std::unique_lock lk(mu);
    posted = false;
    if (!up || writing || out.empty()) return;
    wbuf.swap(out);
    out.clear();
    out_partial = 0;
    unsent_pings = 0;
    writing = true;
    lk.unlock();
    const uint64_t g = gen;
    with_stream([&](auto& s) {
      asio::async_write(s, asio::buffer(wbuf), [this, g](error_code ec, size_t) {
        if (g != gen) return;
        if (ec) return fail(g, "write: " + ec.message());
        std::vector<std::function<void()>> released;
        {
          std::lock_guard l(mu);
          writing = false;
          wbuf.clear();
          if (congested.load(std::memory_order_relaxed) && out.size() <= kMaxQueued / 2) {
            congested.store(false, std::memory_order_relaxed);
            released.swap(drain_waiters);
          }
          // Buffers keep their size during a burst and give it back once the link is idle.
          if (out.empty() && wbuf.capacity() > kKeepBuffer) {
            std::string().swap(wbuf);
            std::string().swap(out);
          }
        }
        for (auto& f : released) f();
        start_write();
      });
    });
  }

  // Caller's thread, under mu: writes `data` to the idle plain socket now; the rest of a partial
  // write is queued. False when nothing was written (busy, not plain TCP, or the socket refused):
  // the caller queues the data instead.
  bool try_direct_locked(std::string_view data) {
    if (fd < 0 || writing || posted || !out.empty()) return false;
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n <= 0) return false;  // queued whole by the caller; the link thread writes it or finds the error
    if (static_cast<size_t>(n) < data.size()) {
      out.append(data.substr(static_cast<size_t>(n)));
      out_partial = out.size();
      kick_locked();
    }
    return true;
  }

  Code publish(std::string_view subject, std::string_view reply, std::string_view headers, std::string_view payload,
               bool now) {
    const int64_t mp = max_payload.load(std::memory_order_relaxed);
    if (mp > 0 && headers.size() + payload.size() > static_cast<size_t>(mp)) return Code::payload_too_large;
    std::unique_lock lk(mu);
    if (!up || out.size() > kHardQueued) return Code::bus_unavailable;
    if (now && fd >= 0 && !writing && !posted && out.empty()) {
      thread_local std::string scratch;
      scratch.clear();
      encode_pub(scratch, subject, reply, headers, payload);
      if (try_direct_locked(scratch)) return Code::ok;
    }
    encode_pub(out, subject, reply, headers, payload);
    if (out.size() > kMaxQueued) congested.store(true, std::memory_order_relaxed);
    kick_locked();
    return Code::ok;
  }

  void queue_ping(DoneFn done) {
    std::unique_lock lk(mu);
    if (!up) {
      lk.unlock();
      if (done) done(false);
      return;
    }
    pongs.push_back(std::move(done));
    if (try_direct_locked("PING\r\n")) return;
    out.append("PING\r\n");
    ++unsent_pings;
    kick_locked();
  }

  void subscribe(uint64_t sid, std::string_view subject, std::string_view queue) {
    std::lock_guard lk(mu);
    subs[sid] = {std::string(subject), std::string(queue)};
    if (!up) return;  // sent on connect
    append_sub(out, subject, queue, sid);
    kick_locked();
  }

  void unsubscribe(uint64_t sid) {
    std::lock_guard lk(mu);
    if (subs.erase(sid) == 0 || !up) return;
    out.append("UNSUB ");
    append_num(out, sid);
    out.append("\r\n");
    kick_locked();
  }

  void shutdown() {  // link thread
    stopping = true;
    ++gen;
    connect_timer.cancel();
    ping_timer.cancel();
    retry_timer.cancel();
    resolver.cancel();
    std::deque<DoneFn> failed;
    {
      std::lock_guard lk(mu);
      up = false;
      up_flag.store(false);
      fd = -1;
      failed.swap(pongs);
      cv.notify_all();
    }
    error_code ec;
    if (sock) {
      // Best effort: what is queued goes out before the close.
      std::string rest;
      {
        std::lock_guard lk(mu);
        rest.swap(out);
      }
      if (!tls && !rest.empty() && !writing) asio::write(*sock, asio::buffer(rest), ec);
      sock->close(ec);
    }
    for (auto& f : failed)
      if (f) f(false);
  }
};

NatsLink::NatsLink(NatsLinkOptions opts, MsgFn on_msg, EventFn on_event)
    : impl_(std::make_shared<Impl>(std::move(opts), std::move(on_msg), std::move(on_event))) {}

NatsLink::~NatsLink() {
  if (!impl_->thread.joinable()) return;
  asio::post(impl_->io, [impl = impl_.get()] {
    impl->shutdown();
    impl->work.reset();
    impl->io.stop();
  });
  impl_->thread.join();
}

bool NatsLink::start(std::chrono::milliseconds wait) {
  Impl& i = *impl_;
  i.work.emplace(i.io.get_executor());
  i.thread = std::thread([&i] {
    // Nothing escapes the link thread: an exception from a handler ends the current connection (the
    // link reconnects) and the thread goes on.
    for (;;) {
      try {
        i.io.run();
        return;
      } catch (const std::exception& e) {
        spdlog::error("nats: connection '{}': {}", i.opt.name, e.what());
      } catch (...) {
        spdlog::error("nats: connection '{}': unknown exception", i.opt.name);
      }
      if (i.stopping) return;
      asio::post(i.io, [&i] { i.fail(i.gen, "the connection was reset after an internal error"); });
    }
  });
  asio::post(i.io, [&i] { i.connect_next(); });
  std::unique_lock lk(i.mu);
  i.cv.wait_for(lk, wait, [&] { return i.first_attempt_done; });
  return i.up;
}

bool NatsLink::connected() const { return impl_->up_flag.load(); }
int64_t NatsLink::max_payload() const { return impl_->max_payload.load(); }
uint64_t NatsLink::reconnects() const { return impl_->reconnects.load(); }

Code NatsLink::publish(std::string_view subject, std::string_view reply, std::string_view headers,
                       std::string_view payload, bool now) {
  return impl_->publish(subject, reply, headers, payload, now);
}
void NatsLink::subscribe(uint64_t sid, std::string_view subject, std::string_view queue) {
  impl_->subscribe(sid, subject, queue);
}
void NatsLink::unsubscribe(uint64_t sid) { impl_->unsubscribe(sid); }
void NatsLink::ping(DoneFn done) { impl_->queue_ping(std::move(done)); }
bool NatsLink::congested() const { return impl_->congested.load(std::memory_order_relaxed); }
void NatsLink::when_drained(std::function<void()> fn) {
  {
    std::lock_guard lk(impl_->mu);
    if (impl_->congested.load() && impl_->up) {
      impl_->drain_waiters.push_back(std::move(fn));
      return;
    }
  }
  fn();
}

}  // namespace busgate::gw
