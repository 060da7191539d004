#include "flush_batch.hpp"

#include <vector>

namespace busgate::gw {

namespace {
thread_local int t_depth = 0;
thread_local std::vector<std::function<void()>> t_deferred;
}  // namespace

FlushBatch::FlushBatch() { ++t_depth; }

FlushBatch::~FlushBatch() {
  if (--t_depth != 0) return;
  // The list is swapped out first: a deferred flush only posts, but nothing it does may touch it.
  std::vector<std::function<void()>> run;
  run.swap(t_deferred);
  for (auto& f : run) f();
  run.clear();
  if (t_deferred.empty()) run.swap(t_deferred);  // keep the capacity for the next batch
}

bool FlushBatch::defer(std::function<void()>&& flush) {
  if (t_depth == 0) return false;
  t_deferred.push_back(std::move(flush));
  return true;
}

}  // namespace busgate::gw
