#pragma once
// Failed authentications per remote address: a token bucket per address, so that a peer guessing
// tokens gets a small budget of failures and then has to wait, while clients elsewhere are not slowed.
//
// Each address starts with `burst` tokens; every failed authentication takes one, and tokens come back
// at `per_sec` a second, up to `burst`. An address with less than one token is throttled until one is
// back. A successful authentication does not refill the bucket (a peer holding one valid token could
// otherwise reset its budget between guesses at other tenants' tokens).
//
// Which addresses share a bucket: an IPv4 address is its own bucket (an IPv4-mapped IPv6 address
// `::ffff:a.b.c.d` is the same bucket as `a.b.c.d`). An IPv6 address is keyed by its /64 prefix: one
// subscriber usually holds a whole /64, so keying by the full address would hand a guesser 2^64
// buckets. An address that does not parse as either is keyed by its text.
//
// Memory is bounded: only addresses with failures are kept (an address whose bucket is full again is
// the same as one never seen, and its entry is dropped when next touched or swept). At most
// `max_addresses` entries are kept. When a new address finds the map full, entries whose bucket has
// refilled are swept; if that frees too little, the entries closest to full (those that would be
// forgotten soonest anyway) are evicted until the map is at 7/8 of its bound. Evicting never makes a
// throttled address more throttled; at worst an address the throttle was about to forgive is
// forgiven early.
//
// Thread-safe: one mutex. allowed() for an address without failures is one hash lookup (and no lock at
// all while no address has failures, or while the throttle is off).

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string_view>
#include <unordered_map>

namespace busgate::gw {

// The address part of a transport's remote() string ("127.0.0.1:52648", "::1:5000", "[::1]:5000",
// "fe80::1%eth0:5000"): the text before the port. Brackets are removed. A string with more than one
// colon and no brackets is an IPv6 address followed by ":port", as the transports format it (the text
// after the last colon is dropped). A string without a port ("?") is returned as it is.
std::string_view address_of(std::string_view remote);

class AuthThrottle {
 public:
  using Clock = std::chrono::steady_clock;

  // burst 0 or per_sec 0 (or below): the throttle is off and allowed() is always true. A rate so low
  // that an empty bucket would take more than a year to refill is raised to refill it in a year.
  AuthThrottle(uint32_t burst, double per_sec, size_t max_addresses = 65536);

  // False while `address` (an address_of() result) has less than one token.
  bool allowed(std::string_view address, Clock::time_point now);
  // One failed authentication from `address`: takes one token. The count may go below zero when
  // failures raced past allowed() concurrently; each is paid for.
  void failed(std::string_view address, Clock::time_point now);
  // Seconds until `address` has one token again; 0 when it is allowed now.
  double retry_after_s(std::string_view address, Clock::time_point now);
  // Addresses currently kept (with failures not yet forgiven, or not yet swept).
  size_t tracked() const;
  // New limits (a reload). Kept addresses keep their tokens, capped at the new burst; turning the
  // throttle off forgets every address.
  void reconfigure(uint32_t burst, double per_sec, Clock::time_point now = Clock::now());

  // The bucket key of an address: 16 bytes (IPv4 as IPv4-mapped IPv6, IPv6 cut to its /64).
  using Key = std::array<uint8_t, 16>;
  static Key key_of(std::string_view address);

 private:
  // Each address is one time point: when its bucket is full again (a generic cell rate algorithm,
  // in whole clock ticks, so that no rounding builds up). An address with no entry has a full bucket.
  struct KeyHash {
    size_t operator()(const Key& k) const noexcept;
  };
  using Map = std::unordered_map<Key, Clock::time_point, KeyHash>;

  bool on() const { return burst_ > 0 && per_sec_ > 0; }
  void set_limits(uint32_t burst, double per_sec);
  void make_room(Clock::time_point now);  // called with mu_ held when the map is full
  void sweep(Clock::time_point now);      // drops refilled entries; mu_ held

  mutable std::mutex mu_;
  uint32_t burst_ = 0;
  double per_sec_ = 0;
  Clock::duration interval_{};  // the time one token takes to come back
  Clock::duration slack_{};     // (burst - 1) intervals: how far ahead "full" may be while allowed
  const size_t max_addresses_;
  Map full_at_;
  Clock::time_point last_sweep_{};
  // Lock-free fast path for allowed(): true while the throttle is on and some address has failures.
  std::atomic<bool> any_{false};
};

}  // namespace busgate::gw
