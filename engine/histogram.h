// File: engine/histogram.h
// A log-linear histogram of non-negative integers (microseconds, bytes, packets), written by
// one thread and read by any: what the profiler (profile.h) keeps per reactor.
//
// Buckets: upper bounds 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, ... (every power of two and the
// midpoint 1.5 x 2^k below it), so each bucket is at most a third of its value wide at any
// magnitude (a linear histogram is too coarse for small values or too long for large ones),
// and a value finds its bucket with one bit scan, no loop and no table. Values above the last
// bound, 2^kOctaves, land in the overflow (+Inf) bucket. Bucket i counts values v with
// bound(i-1) < v <= bound(i), Prometheus' `le` rule.
// Threads: observe() on the owner thread only (alloc::OwnerCounter: plain loads and stores);
// count()/sum() from any thread, a relaxed snapshot (a reader may see a count that a
// concurrent observe has raised and a sum it has not, never a torn value).
#ifndef ENGINE_HISTOGRAM_H_
#define ENGINE_HISTOGRAM_H_

#include <bit>
#include <cstddef>
#include <cstdint>

#include "alloc/owner_counter.h"

namespace engine {

// Two buckets per octave above the first two; the bounds up to 2^octaves.
constexpr std::size_t log_linear_buckets(unsigned octaves) { return 2 * std::size_t{octaves}; }

// The upper bound of bucket i (inclusive).
constexpr uint64_t log_linear_bound(std::size_t i) {
  if (i < 2) return i + 1;
  const unsigned k = static_cast<unsigned>(i / 2);  // the octave (2^k, 2^(k+1)]
  return (i % 2) ? uint64_t{2} << k : uint64_t{3} << (k - 1);
}

// The bucket of v: the first i with v <= log_linear_bound(i).
constexpr std::size_t log_linear_index(uint64_t v) {
  if (v <= 2) return v <= 1 ? 0 : 1;
  const unsigned k = static_cast<unsigned>(std::bit_width(v - 1)) - 1;  // 2^k < v <= 2^(k+1)
  return 2 * std::size_t{k} + (v > (uint64_t{3} << (k - 1)) ? 1 : 0);
}

static_assert(log_linear_bound(0) == 1 && log_linear_bound(1) == 2 && log_linear_bound(2) == 3 &&
              log_linear_bound(3) == 4 && log_linear_bound(4) == 6 && log_linear_bound(5) == 8);
static_assert(log_linear_index(0) == 0 && log_linear_index(1) == 0 && log_linear_index(2) == 1 &&
              log_linear_index(3) == 2 && log_linear_index(4) == 3 && log_linear_index(5) == 4 &&
              log_linear_index(6) == 4 && log_linear_index(7) == 5 && log_linear_index(8) == 5);
static_assert(log_linear_bound(log_linear_buckets(10) - 1) == 1024);

template <unsigned kOctaves>
class LogLinearHistogram {
 public:
  static_assert(kOctaves >= 1 && kOctaves <= 62);
  // Finite buckets; index kBuckets is the overflow.
  static constexpr std::size_t kBuckets = log_linear_buckets(kOctaves);
  static constexpr uint64_t kMaxBound = log_linear_bound(kBuckets - 1);
  static_assert(kMaxBound == uint64_t{1} << kOctaves);

  void observe(uint64_t v) {
    counts_[v > kMaxBound ? kBuckets : log_linear_index(v)].add(1);
    sum_.add(v);
  }
  // Observations in bucket i (0 <= i <= kBuckets; kBuckets: above kMaxBound).
  uint64_t count(std::size_t i) const { return counts_[i].get(); }
  uint64_t sum() const { return sum_.get(); }
  // Observations in all: the buckets summed, so a snapshot agrees with its buckets.
  uint64_t total() const {
    uint64_t n = 0;
    for (const alloc::OwnerCounter& c : counts_) n += c.get();
    return n;
  }

 private:
  alloc::OwnerCounter counts_[kBuckets + 1];
  alloc::OwnerCounter sum_;
};

}  // namespace engine

#endif  // ENGINE_HISTOGRAM_H_
