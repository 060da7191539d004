#pragma once
// Finding another live node that uses this node's id on the bus. Two such nodes would share the
// node inbox `_INBOX.<node_id>.*` (and the store-confirmation inboxes under it), so the one that
// comes second refuses to become ready.
//
// The exchange runs through the node inbox itself, which every node with the id subscribes to:
// - after every (re)connection a node publishes `_INBOX.<id>.probe-<r|s>-<nonce>`, `r` when it is
//   ready, `s` when not (starting, or a duplicate asking again), with its instance nonce (random,
//   16 hex digits);
// - a node that receives a probe with another nonce knows a duplicate exists (the caller logs it)
//   and may answer `_INBOX.<id>.here-<prober's nonce>`, which tells the prober it loses;
// - a node that receives `here-<its nonce>` is a duplicate: not ready. While a duplicate it probes
//   again every `retry` (plus up to `jitter`); a probe nobody answers within `window` makes it
//   ready, so it takes over once the other node is gone.
// Who answers: a ready node answers every probe, except a ready prober's while it is itself probing
// and its nonce is the larger (two ready nodes reconnecting together: exactly one loses). A node
// that is not ready answers only while it is probing itself, a prober that is not ready either, and
// its nonce is the smaller (two nodes starting together: exactly one loses). So the node already
// serving keeps serving, and two probing nodes never both lose or both win.
//
// Pure and not thread-safe: the caller holds a lock, publishes what it is told and calls tick() by
// next_tick().

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>

namespace busgate::gw {

class NodeIdProbe {
 public:
  using Clock = std::chrono::steady_clock;
  using Ms = std::chrono::milliseconds;
  struct Options {
    Ms window{300};   // how long a probe waits for an answer
    Ms retry{2000};   // a duplicate probes again after this ...
    Ms jitter{500};   // ... plus up to this much (spreads duplicates that started together)
  };
  enum class State {
    unknown,    // never connected: nothing probed yet
    starting,   // probing for the first time
    ready,      // no other live node with this id answered
    duplicate,  // another live node with this id answered: not ready
  };
  // What an inbox message meant.
  struct Reaction {
    std::string answer;    // a subject token to publish in the node inbox ("here-..."), or empty
    bool conflict = false;  // a probe from another node with this id arrived
    bool lost = false;      // this node just became a duplicate
  };

  explicit NodeIdProbe(uint64_t nonce, Options o) : nonce_(nonce), o_(o), jitter_state_(nonce | 1) {}
  explicit NodeIdProbe(uint64_t nonce) : NodeIdProbe(nonce, Options{}) {}

  State state() const { return state_; }
  bool ready() const { return state_ == State::ready; }
  bool probing() const { return probing_; }
  uint64_t nonce() const { return nonce_; }

  // The bus (re)connected: the probe token to publish now.
  std::string on_connected(Clock::time_point now) {
    if (state_ == State::unknown) state_ = State::starting;
    return start_probe(now);
  }
  // The connection was lost: a probe in flight is void (the next connection probes again).
  void on_disconnected() { probing_ = false; }

  // A message arrived in the node inbox whose last subject token is `tok` (not a request token).
  Reaction on_inbox(std::string_view tok, Clock::time_point now) {
    Reaction r;
    uint64_t n = 0;
    if (tok.starts_with("here-")) {
      if (!parse_nonce(tok.substr(5), n) || n != nonce_) return r;  // an answer to another prober
      // Whenever it comes (even after the window): a node with priority has this id.
      r.lost = state_ != State::duplicate;
      state_ = State::duplicate;
      probing_ = false;
      next_probe_ = now + o_.retry + next_jitter();
      return r;
    }
    if (!tok.starts_with("probe-") || tok.size() < 8 || tok[7] != '-') return r;
    const char flag = tok[6];
    if ((flag != 'r' && flag != 's') || !parse_nonce(tok.substr(8), n) || n == nonce_) return r;  // our own
    r.conflict = true;
    const bool prober_ready = flag == 'r';
    bool answer = false;
    if (state_ == State::ready) answer = !prober_ready || !probing_ || nonce_ < n;
    else if (state_ != State::unknown) answer = probing_ && !prober_ready && nonce_ < n;
    if (answer) r.answer = "here-" + hex(n);
    return r;
  }

  // Time passes (`connected`: the bus is up). Returns a probe token to publish now, or empty.
  std::string tick(Clock::time_point now, bool connected) {
    if (probing_ && now >= window_end_) {
      probing_ = false;  // nobody answered
      if (state_ == State::starting || state_ == State::duplicate) {
        recovered_ = state_ == State::duplicate;
        state_ = State::ready;
      }
    }
    if (state_ == State::duplicate && !probing_ && connected && now >= next_probe_) return start_probe(now);
    return {};
  }
  // Whether the last tick() made a duplicate ready (once).
  bool take_recovered() {
    const bool r = recovered_;
    recovered_ = false;
    return r;
  }
  // When tick() has something to do next; Clock::time_point::max() for never.
  Clock::time_point next_tick() const {
    if (probing_) return window_end_;
    if (state_ == State::duplicate) return next_probe_;
    return Clock::time_point::max();
  }

  static std::string hex(uint64_t v) {
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
    return std::string(buf, 16);
  }

 private:
  std::string start_probe(Clock::time_point now) {
    probing_ = true;
    window_end_ = now + o_.window;
    return std::string("probe-") + (state_ == State::ready ? 'r' : 's') + '-' + hex(nonce_);
  }
  static bool parse_nonce(std::string_view s, uint64_t& out) {
    if (s.size() != 16) return false;
    uint64_t v = 0;
    for (char c : s) {
      int d;
      if (c >= '0' && c <= '9') d = c - '0';
      else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
      else return false;
      v = (v << 4) | static_cast<uint64_t>(d);
    }
    out = v;
    return true;
  }
  Ms next_jitter() {
    // xorshift64: enough to spread retries; nothing depends on it being unpredictable.
    jitter_state_ ^= jitter_state_ << 13;
    jitter_state_ ^= jitter_state_ >> 7;
    jitter_state_ ^= jitter_state_ << 17;
    const auto span = static_cast<uint64_t>(o_.jitter.count()) + 1;
    return Ms(static_cast<Ms::rep>(jitter_state_ % span));
  }

  uint64_t nonce_;
  Options o_;
  uint64_t jitter_state_;
  State state_ = State::unknown;
  bool probing_ = false;
  bool recovered_ = false;
  Clock::time_point window_end_{};
  Clock::time_point next_probe_{};
};

}  // namespace busgate::gw
