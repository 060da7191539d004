#pragma once
// Latency recording shared by busgate-bench's request/reply workloads.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace busgate::bench {

// Log-linear latency histogram (HDR-style: ~1% relative precision from 1 µs to ~100 s).
class Histogram {
 public:
  void record(double us) {
    if (us < 1) us = 1;
    const int b = static_cast<int>(std::log(us) / std::log(1.01));
    counts_[std::min(b, kBuckets - 1)]++;
    n_++;
    max_ = std::max(max_, us);
  }
  double percentile(double p) const {
    if (!n_) return 0;
    const uint64_t want = static_cast<uint64_t>(std::ceil(p / 100.0 * static_cast<double>(n_)));
    uint64_t seen = 0;
    for (int b = 0; b < kBuckets; ++b) {
      seen += counts_[b];
      if (seen >= want) return std::pow(1.01, b + 0.5);
    }
    return max_;
  }
  uint64_t count() const { return n_; }
  void merge(const Histogram& o) {
    for (int b = 0; b < kBuckets; ++b) counts_[b] += o.counts_[b];
    n_ += o.n_;
    max_ = std::max(max_, o.max_);
  }

 private:
  static constexpr int kBuckets = 1900;
  std::vector<uint64_t> counts_ = std::vector<uint64_t>(kBuckets);
  uint64_t n_ = 0;
  double max_ = 0;
};

inline std::string latency_fields(const Histogram& h, double elapsed) {
  char buf[256];
  std::snprintf(buf, sizeof buf, "\"requests\":%llu,\"per_sec\":%.1f,\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f",
                static_cast<unsigned long long>(h.count()), static_cast<double>(h.count()) / elapsed, h.percentile(50),
                h.percentile(90), h.percentile(99), h.percentile(99.9));
  return buf;
}

}  // namespace busgate::bench
