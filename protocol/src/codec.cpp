#include "busgate/protocol/codec.hpp"

#include <initializer_list>

#include "busgate/protocol/subject.hpp"

namespace busgate::proto {

std::string_view op_name(uint64_t op) {
  static constexpr std::string_view kNames[] = {"?",   "HELLO", "WELCOME", "PUB",  "SUB",  "UNSUB",
                                                "MSG", "REQ",   "RES",     "OK",   "ERR",  "PING",
                                                "PONG", "GOAWAY", "ACK",   "NAK",  "CREDIT",
                                                "PROGRESS", "TERM"};
  return op <= kMaxOp ? kNames[op] : kNames[0];
}

bool op_allowed_from(uint64_t op, Origin from) {
  switch (static_cast<Op>(op)) {
    case Op::ping:
    case Op::pong: return true;
    case Op::hello:
    case Op::pub:
    case Op::sub:
    case Op::unsub:
    case Op::req:
    case Op::ack:
    case Op::nak:
    case Op::credit:
    case Op::progress:
    case Op::term: return from == Origin::client;
    default: return from == Origin::gateway;
  }
}

namespace {

// Reads the positional fields of one frame. nil and missing trailing fields both mean "absent".
class Fields {
 public:
  Fields(mp::Reader& rd, uint32_t count, uint64_t op) : rd_(rd), left_(count), op_(op) {}

  bool uint(uint64_t& v, const char* name, bool required) {
    if (absent()) return required ? missing(name) : next();
    return rd_.read_uint(v) ? next() : wrong(name, "an unsigned integer");
  }
  bool u32(uint32_t& v, const char* name, bool required) {
    uint64_t x = 0;
    if (!uint(x, name, required)) return false;
    if (x > 0xffffffffULL) return wrong(name, "an unsigned 32-bit integer");
    v = static_cast<uint32_t>(x);
    return true;
  }
  bool str(std::string_view& v, const char* name) {
    if (absent()) return missing(name);
    return rd_.read_str(v) ? next() : wrong(name, "a string");
  }
  bool opt_str(std::optional<std::string_view>& v, const char* name) {
    if (absent()) return next();
    std::string_view s;
    if (!rd_.read_str(s)) return wrong(name, "a string");
    v = s;
    return next();
  }
  bool bin(std::string_view& v, const char* name) {
    if (absent()) return missing(name);
    return rd_.read_bin(v) ? next() : wrong(name, "binary (msgpack bin)");
  }
  // opts, auth and limits: maps with unique str keys and no binary values (so every frame has a JSON form).
  bool map(mp::Value& v, const char* name, bool required) {
    if (absent()) return required ? missing(name) : next();
    if (rd_.peek() != mp::Type::map || !rd_.read_value(v) || has_bin(v))
      return wrong(name, "a map with unique string keys and no binary values");
    return next();
  }
  static bool has_bin(const mp::Value& v) {
    if (v.type == mp::Type::bin) return true;
    for (const auto& e : v.array)
      if (has_bin(e)) return true;
    for (const auto& [k, e] : v.map)
      if (has_bin(e)) return true;
    return false;
  }
  bool headers(Headers& h, const char* name) {
    if (absent()) return next();
    uint32_t n = 0;
    if (!rd_.read_map(n)) return wrong(name, "a map of string to string");
    h.reserve(n);
    for (uint32_t i = 0; i < n; ++i) {
      Header e;
      if (!rd_.read_str(e.key) || !rd_.read_str(e.value)) return wrong(name, "a map of string to string");
      for (const auto& prev : h)
        if (prev.key == e.key) return wrong(name, "a map without repeated keys");
      h.push_back(e);
    }
    return next();
  }
  bool uint_array(std::vector<uint64_t>& v, const char* name) {
    if (absent()) return missing(name);
    uint32_t n = 0;
    if (!rd_.read_array(n)) return wrong(name, "an array of unsigned integers");
    v.resize(n);
    for (auto& x : v)
      if (!rd_.read_uint(x)) return wrong(name, "an array of unsigned integers");
    return next();
  }
  bool str_array(std::vector<std::string_view>& v, const char* name) {
    if (absent()) return next();
    uint32_t n = 0;
    if (!rd_.read_array(n)) return wrong(name, "an array of strings");
    v.resize(n);
    for (auto& x : v)
      if (!rd_.read_str(x)) return wrong(name, "an array of strings");
    return next();
  }
  // Skips unknown trailing fields (forward compatibility); they must still be valid msgpack.
  bool finish() {
    for (; left_ > 0; --left_)
      if (!rd_.skip()) {
        error = "malformed msgpack in a trailing field";
        return false;
      }
    return true;
  }

  std::string error;

 private:
  // Starts the next field; true when it is absent (missing or nil), which is consumed.
  bool absent() {
    ++index_;
    if (left_ == 0) return true;
    --left_;
    if (rd_.peek() == mp::Type::nil) {
      rd_.read_nil();
      return true;
    }
    return false;
  }
  static bool next() { return true; }
  bool missing(const char* name) {
    error = std::string(op_name(op_)) + " field " + std::to_string(index_) + " (" + name + ") is required";
    return false;
  }
  bool wrong(const char* name, const char* what) {
    error = std::string(op_name(op_)) + " field " + std::to_string(index_) + " (" + name + ") must be " + what;
    return false;
  }

  mp::Reader& rd_;
  uint32_t left_;
  uint64_t op_;
  uint32_t index_ = 0;
};

DecodeResult fail(DecodeResult r, Code code, std::string detail) {
  r.code = code;
  r.detail = std::move(detail);
  return r;
}

bool decode_fields(Fields& f, uint64_t op, Frame& out) {
  switch (static_cast<Op>(op)) {
    case Op::hello: {
      Hello h;
      if (!f.uint_array(h.versions, "versions") || !f.map(h.auth, "auth", true) || !f.opt_str(h.name, "name") ||
          !f.map(h.opts, "opts", false))
        return false;
      if (h.versions.empty()) {
        f.error = "HELLO field 1 (versions) must not be empty";
        return false;
      }
      out = std::move(h);
      return true;
    }
    case Op::welcome: {
      Welcome w;
      if (!f.uint(w.version, "version", true) || !f.str(w.session_id, "session_id") ||
          !f.str(w.node_id, "node_id") || !f.str(w.tenant, "tenant") || !f.map(w.limits, "limits", true))
        return false;
      out = std::move(w);
      return true;
    }
    case Op::pub: {
      Pub p;
      uint32_t ack = 0;
      if (!f.str(p.subject, "subject") || !f.bin(p.payload, "payload") || !f.headers(p.headers, "headers") ||
          !f.opt_str(p.reply_to, "reply_to") || !f.u32(ack, "ack", false) || !f.opt_str(p.msg_id, "msg_id"))
        return false;
      p.ack = ack;
      out = std::move(p);
      return true;
    }
    case Op::sub: {
      Sub s;
      if (!f.u32(s.sid, "sid", true) || !f.str(s.subject, "subject") || !f.opt_str(s.queue, "queue") ||
          !f.map(s.opts, "opts", false))
        return false;
      out = std::move(s);
      return true;
    }
    case Op::unsub: {
      Unsub u;
      if (!f.u32(u.sid, "sid", true) || !f.uint(u.max_msgs, "max_msgs", false)) return false;
      out = u;
      return true;
    }
    case Op::msg: {
      Msg m;
      if (!f.u32(m.sid, "sid", true) || !f.str(m.subject, "subject") || !f.bin(m.payload, "payload") ||
          !f.headers(m.headers, "headers") || !f.opt_str(m.reply_to, "reply_to") ||
          !f.uint(m.delivery_id, "delivery_id", false) || !f.uint(m.attempt, "attempt", false))
        return false;
      out = std::move(m);
      return true;
    }
    case Op::req: {
      Req q;
      if (!f.u32(q.req_id, "req_id", true) || !f.str(q.subject, "subject") || !f.bin(q.payload, "payload") ||
          !f.headers(q.headers, "headers") || !f.uint(q.timeout_ms, "timeout_ms", false))
        return false;
      out = std::move(q);
      return true;
    }
    case Op::res: {
      Res r;
      if (!f.u32(r.req_id, "req_id", true) || !f.uint(r.status, "status", true) || !f.bin(r.payload, "payload") ||
          !f.headers(r.headers, "headers"))
        return false;
      out = std::move(r);
      return true;
    }
    case Op::ok: {
      Ok o;
      if (!f.uint(o.ref_op, "ref_op", true) || !f.uint(o.ref_id, "ref_id", true)) return false;
      out = o;
      return true;
    }
    case Op::err: {
      Err e;
      if (!f.uint(e.code, "code", true) || !f.str(e.message, "message") || !f.uint(e.ref_op, "ref_op", false) ||
          !f.uint(e.ref_id, "ref_id", false))
        return false;
      out = e;
      return true;
    }
    case Op::ping: out = Ping{}; return true;
    case Op::pong: out = Pong{}; return true;
    case Op::goaway: {
      Goaway g;
      if (!f.uint(g.delay_ms, "delay_ms", true) || !f.str(g.reason, "reason") || !f.str_array(g.servers, "servers"))
        return false;
      out = std::move(g);
      return true;
    }
    case Op::ack: {
      Ack a;
      if (!f.u32(a.sid, "sid", true) || !f.uint(a.delivery_id, "delivery_id", true)) return false;
      out = a;
      return true;
    }
    case Op::nak: {
      Nak n;
      if (!f.u32(n.sid, "sid", true) || !f.uint(n.delivery_id, "delivery_id", true) ||
          !f.uint(n.delay_ms, "delay_ms", false))
        return false;
      out = n;
      return true;
    }
    case Op::credit: {
      Credit c;
      if (!f.u32(c.sid, "sid", true) || !f.uint(c.credits, "credits", true)) return false;
      out = c;
      return true;
    }
    case Op::progress: {
      Progress p;
      if (!f.u32(p.sid, "sid", true) || !f.uint(p.delivery_id, "delivery_id", true)) return false;
      out = p;
      return true;
    }
    case Op::term: {
      Term t;
      if (!f.u32(t.sid, "sid", true) || !f.uint(t.delivery_id, "delivery_id", true) ||
          !f.opt_str(t.reason, "reason"))
        return false;
      out = t;
      return true;
    }
  }
  return false;
}

Code check_publish_subject(std::string_view s, std::string& detail, const char* what) {
  Code c = validate_subject(s, false);
  if (c == Code::ok && is_reserved_subject(s)) c = Code::reserved_subject;
  if (c != Code::ok) detail = std::string(what) + " '" + std::string(s.substr(0, 64)) + "': " +
                              std::string(code_name(c));
  return c;
}

Code check_headers(const Headers& headers, std::string& detail) {
  if (headers.size() > kMaxHeaders) {
    detail = "more than 64 headers";
    return Code::invalid_header;
  }
  for (const auto& h : headers) {
    const Code c = validate_header(h.key, h.value);
    if (c != Code::ok) {
      detail = "header '" + std::string(h.key.substr(0, 64)) + "': " + std::string(code_name(c));
      return c;
    }
  }
  return Code::ok;
}

bool valid_msg_id(std::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  for (unsigned char ch : id)
    if (ch <= 0x20 || ch >= 0x7f) return false;
  return true;
}

// Rules for frames sent by clients (docs/protocol.md: Subjects, Headers).
Code validate_client_frame(const Frame& frame, std::string& detail) {
  if (const auto* p = std::get_if<Pub>(&frame)) {
    Code c = check_publish_subject(p->subject, detail, "subject");
    if (c == Code::ok && p->reply_to) c = check_publish_subject(*p->reply_to, detail, "reply_to");
    if (c == Code::ok) c = check_headers(p->headers, detail);
    if (c == Code::ok && p->msg_id && !valid_msg_id(*p->msg_id)) {
      detail = "msg_id must be 1 to 128 printable ASCII characters without spaces";
      c = Code::invalid_option;
    }
    return c;
  }
  if (const auto* q = std::get_if<Req>(&frame)) {
    Code c = check_publish_subject(q->subject, detail, "subject");
    if (c == Code::ok) c = check_headers(q->headers, detail);
    return c;
  }
  if (const auto* s = std::get_if<Sub>(&frame)) {
    Code c = validate_subject(s->subject, true);
    if (c == Code::ok && is_reserved_subject(s->subject)) c = Code::reserved_subject;
    if (c != Code::ok) {
      detail = "subject '" + std::string(s->subject.substr(0, 64)) + "': " + std::string(code_name(c));
      return c;
    }
    if (s->queue && validate_queue(*s->queue) != Code::ok) {
      detail = "queue group '" + std::string(s->queue->substr(0, 64)) + "' is not a valid name";
      return Code::invalid_queue;
    }
  }
  return Code::ok;
}

}  // namespace

DecodeResult decode(std::string_view body, Origin from, Frame& out) {
  DecodeResult r;
  mp::Reader rd(body);
  uint32_t n = 0;
  if (body.empty()) return fail(std::move(r), Code::malformed_frame, "empty frame body");
  if (!rd.read_array(n)) return fail(std::move(r), Code::malformed_frame, "frame body is not a msgpack array");
  if (n == 0) return fail(std::move(r), Code::malformed_frame, "frame array is empty");
  uint64_t op = 0;
  if (!rd.read_uint(op)) return fail(std::move(r), Code::malformed_frame, "op is not an unsigned integer");
  r.op = op;
  const bool unknown = op == 0 || op > kMaxOp;
  if (unknown || !op_allowed_from(op, from)) {
    // docs/protocol.md 3.4: the body must be well-formed msgpack (check 2) before the op is judged.
    for (uint32_t i = 1; i < n; ++i)
      if (!rd.skip()) return fail(std::move(r), Code::malformed_frame, "malformed msgpack in the frame body");
    if (!rd.at_end())
      return fail(std::move(r), Code::malformed_frame,
                  std::to_string(rd.remaining()) + " trailing bytes after the frame array");
    if (unknown) return fail(std::move(r), Code::unknown_op, "unknown op " + std::to_string(op));
    return fail(std::move(r), Code::unexpected_op,
                std::string(op_name(op)) + " is not sent by a " + (from == Origin::client ? "client" : "gateway"));
  }
  Fields f(rd, n - 1, op);
  if (!decode_fields(f, op, out) || !f.finish()) return fail(std::move(r), Code::malformed_frame, f.error);
  if (!rd.at_end())
    return fail(std::move(r), Code::malformed_frame,
                std::to_string(rd.remaining()) + " trailing bytes after the frame array");
  r.has_frame = true;
  if (from == Origin::client) r.code = validate_client_frame(out, r.detail);
  return r;
}

namespace {

size_t count_present(std::initializer_list<bool> present) {
  size_t n = 0;
  size_t i = 0;
  for (bool p : present) {
    ++i;
    if (p) n = i;
  }
  return n;
}

void write_headers(mp::Writer& w, const Headers& h) {
  if (h.empty()) return w.nil();
  w.map_header(static_cast<uint32_t>(h.size()));
  for (const auto& e : h) {
    w.str(e.key);
    w.str(e.value);
  }
}

void write_opt_str(mp::Writer& w, const std::optional<std::string_view>& s) {
  if (s) w.str(*s);
  else w.nil();
}

void write_opt_uint(mp::Writer& w, uint64_t v) {
  if (v) w.uint(v);
  else w.nil();
}

void write_opt_value(mp::Writer& w, const mp::Value& v) { mp::write_value(w, v); }

void start(mp::Writer& w, Op op, size_t fields) {
  w.array_header(static_cast<uint32_t>(fields + 1));
  w.uint(static_cast<uint64_t>(op));
}

}  // namespace

void encode(const Frame& frame, std::string& out) {
  mp::Writer w(out);
  std::visit(
      [&](const auto& f) {
        using T = std::decay_t<decltype(f)>;
        if constexpr (std::is_same_v<T, Hello>) {
          const size_t n = count_present({true, true, f.name.has_value(), !f.opts.is_nil()});
          start(w, Op::hello, n);
          w.array_header(static_cast<uint32_t>(f.versions.size()));
          for (auto v : f.versions) w.uint(v);
          mp::write_value(w, f.auth);
          if (n > 2) write_opt_str(w, f.name);
          if (n > 3) write_opt_value(w, f.opts);
        } else if constexpr (std::is_same_v<T, Welcome>) {
          start(w, Op::welcome, 5);
          w.uint(f.version);
          w.str(f.session_id);
          w.str(f.node_id);
          w.str(f.tenant);
          mp::write_value(w, f.limits);
        } else if constexpr (std::is_same_v<T, Pub>) {
          const size_t n = count_present(
              {true, true, !f.headers.empty(), f.reply_to.has_value(), f.ack != 0, f.msg_id.has_value()});
          start(w, Op::pub, n);
          w.str(f.subject);
          w.bin(f.payload);
          if (n > 2) write_headers(w, f.headers);
          if (n > 3) write_opt_str(w, f.reply_to);
          if (n > 4) write_opt_uint(w, f.ack);
          if (n > 5) write_opt_str(w, f.msg_id);
        } else if constexpr (std::is_same_v<T, Sub>) {
          const size_t n = count_present({true, true, f.queue.has_value(), !f.opts.is_nil()});
          start(w, Op::sub, n);
          w.uint(f.sid);
          w.str(f.subject);
          if (n > 2) write_opt_str(w, f.queue);
          if (n > 3) write_opt_value(w, f.opts);
        } else if constexpr (std::is_same_v<T, Unsub>) {
          const size_t n = count_present({true, f.max_msgs != 0});
          start(w, Op::unsub, n);
          w.uint(f.sid);
          if (n > 1) w.uint(f.max_msgs);
        } else if constexpr (std::is_same_v<T, Msg>) {
          const size_t n = count_present(
              {true, true, true, !f.headers.empty(), f.reply_to.has_value(), f.delivery_id != 0, f.attempt != 0});
          start(w, Op::msg, n);
          w.uint(f.sid);
          w.str(f.subject);
          w.bin(f.payload);
          if (n > 3) write_headers(w, f.headers);
          if (n > 4) write_opt_str(w, f.reply_to);
          if (n > 5) write_opt_uint(w, f.delivery_id);
          if (n > 6) write_opt_uint(w, f.attempt);
        } else if constexpr (std::is_same_v<T, Req>) {
          const size_t n = count_present({true, true, true, !f.headers.empty(), f.timeout_ms != 0});
          start(w, Op::req, n);
          w.uint(f.req_id);
          w.str(f.subject);
          w.bin(f.payload);
          if (n > 3) write_headers(w, f.headers);
          if (n > 4) write_opt_uint(w, f.timeout_ms);
        } else if constexpr (std::is_same_v<T, Res>) {
          const size_t n = count_present({true, true, true, !f.headers.empty()});
          start(w, Op::res, n);
          w.uint(f.req_id);
          w.uint(f.status);
          w.bin(f.payload);
          if (n > 3) write_headers(w, f.headers);
        } else if constexpr (std::is_same_v<T, Ok>) {
          start(w, Op::ok, 2);
          w.uint(f.ref_op);
          w.uint(f.ref_id);
        } else if constexpr (std::is_same_v<T, Err>) {
          const size_t n = count_present({true, true, f.ref_op != 0, f.ref_id != 0});
          start(w, Op::err, n);
          w.uint(f.code);
          w.str(f.message);
          if (n > 2) write_opt_uint(w, f.ref_op);
          if (n > 3) write_opt_uint(w, f.ref_id);
        } else if constexpr (std::is_same_v<T, Ping>) {
          start(w, Op::ping, 0);
        } else if constexpr (std::is_same_v<T, Pong>) {
          start(w, Op::pong, 0);
        } else if constexpr (std::is_same_v<T, Goaway>) {
          const size_t n = count_present({true, true, !f.servers.empty()});
          start(w, Op::goaway, n);
          w.uint(f.delay_ms);
          w.str(f.reason);
          if (n > 2) {
            w.array_header(static_cast<uint32_t>(f.servers.size()));
            for (auto s : f.servers) w.str(s);
          }
        } else if constexpr (std::is_same_v<T, Ack>) {
          start(w, Op::ack, 2);
          w.uint(f.sid);
          w.uint(f.delivery_id);
        } else if constexpr (std::is_same_v<T, Nak>) {
          const size_t n = count_present({true, true, f.delay_ms != 0});
          start(w, Op::nak, n);
          w.uint(f.sid);
          w.uint(f.delivery_id);
          if (n > 2) w.uint(f.delay_ms);
        } else if constexpr (std::is_same_v<T, Credit>) {
          start(w, Op::credit, 2);
          w.uint(f.sid);
          w.uint(f.credits);
        } else if constexpr (std::is_same_v<T, Progress>) {
          start(w, Op::progress, 2);
          w.uint(f.sid);
          w.uint(f.delivery_id);
        } else if constexpr (std::is_same_v<T, Term>) {
          const size_t n = count_present({true, true, f.reason.has_value()});
          start(w, Op::term, n);
          w.uint(f.sid);
          w.uint(f.delivery_id);
          if (n > 2) write_opt_str(w, f.reason);
        }
      },
      frame);
}

size_t begin_frame(std::string& out) {
  const size_t start = out.size();
  out.append(4, '\0');
  return start;
}

void finish_frame(std::string& out, size_t start) {
  const auto len = static_cast<uint32_t>(out.size() - start - 4);
  out[start] = static_cast<char>(len >> 24);
  out[start + 1] = static_cast<char>(len >> 16);
  out[start + 2] = static_cast<char>(len >> 8);
  out[start + 3] = static_cast<char>(len);
}

void encode_framed(const Frame& frame, std::string& out) {
  const size_t s = begin_frame(out);
  encode(frame, out);
  finish_frame(out, s);
}

void encode_msg_framed(std::string& out, uint32_t sid, std::string_view subject, std::string_view payload,
                       std::string_view headers_msgpack, std::string_view reply_to, uint64_t delivery_id,
                       uint64_t attempt) {
  const size_t s = begin_frame(out);
  mp::Writer w(out);
  const size_t n = count_present(
      {true, true, true, !headers_msgpack.empty(), !reply_to.empty(), delivery_id != 0, attempt != 0});
  start(w, Op::msg, n);
  w.uint(sid);
  w.str(subject);
  w.bin(payload);
  if (n > 3) {
    if (headers_msgpack.empty()) w.nil();
    else w.raw(headers_msgpack);
  }
  if (n > 4) {
    if (reply_to.empty()) w.nil();
    else w.str(reply_to);
  }
  if (n > 5) {
    if (delivery_id == 0) w.nil();
    else w.uint(delivery_id);
  }
  if (n > 6) w.uint(attempt);
  finish_frame(out, s);
}

void encode_res_framed(std::string& out, uint32_t req_id, uint64_t status, std::string_view payload,
                       std::string_view headers_msgpack) {
  const size_t s = begin_frame(out);
  mp::Writer w(out);
  start(w, Op::res, headers_msgpack.empty() ? 3 : 4);
  w.uint(req_id);
  w.uint(status);
  w.bin(payload);
  if (!headers_msgpack.empty()) w.raw(headers_msgpack);
  finish_frame(out, s);
}

void encode_err_framed(std::string& out, Code code, std::string_view message, uint64_t ref_op, uint64_t ref_id) {
  Err e;
  e.code = static_cast<uint64_t>(code);
  e.message = message;
  e.ref_op = ref_op;
  e.ref_id = ref_id;
  encode_framed(e, out);
}

void encode_ok_framed(std::string& out, uint64_t ref_op, uint64_t ref_id) { encode_framed(Ok{ref_op, ref_id}, out); }

void encode_headers(std::string& out, const Headers& headers) {
  if (headers.empty()) return;
  mp::Writer w(out);
  write_headers(w, headers);
}

}  // namespace busgate::proto
